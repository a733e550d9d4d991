"""Serving one elastic checkpoint over HTTP: an OpenAI-compatible server whose models are the checkpoint's budgets,
with continuous batching across budgets and load-adaptive budget choice for `<name>@auto`."""
