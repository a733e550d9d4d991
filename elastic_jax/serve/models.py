"""Budgets are models: the ids a server lists and accepts. `<name>@<budget>` is a nested model of the checkpoint
(any budget in (0, 1]; the trained ones are listed), bare `<name>` is the full model and `<name>@auto` lets the
server choose (policy.py)."""

from __future__ import annotations

import math
from typing import Any

from elastic_jax.serve.errors import ApiError, bad_field

AUTO = "auto"


def format_budget(budget: float) -> str:
    """A budget as a model id shows it: 1.0, 0.7, 0.55."""
    return repr(round(float(budget), 6))


class ModelNames:
    """The served name and the trained budgets (largest first); parses a request's `model`."""

    def __init__(self, name: str, trained: tuple[float, ...]):
        self.name, self.trained = name, tuple(sorted(trained, reverse=True))

    def id_of(self, budget: float) -> str:
        return f"{self.name}@{format_budget(budget)}"

    def ids(self) -> list[str]:
        """What /v1/models lists: the full model, each trained budget, and auto."""
        return [self.name, *(self.id_of(b) for b in self.trained), f"{self.name}@{AUTO}"]

    def listing(self, created: int) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": i, "object": "model", "created": created, "owned_by": "elastic_jax",
                                            "root": self.name, "parent": None if i == self.name else self.name}
                                           for i in self.ids()]}

    def parse(self, model: Any) -> float | None:
        """The budget a request asks for (None: auto); an ApiError naming `model` otherwise."""
        if not isinstance(model, str):
            raise bad_field("model", f"must be a string such as {self.id_of(self.trained[0])!r}, got "
                                     f"{type(model).__name__}")
        if model == self.name:
            return max(self.trained)
        name, at, budget = model.rpartition("@")
        if not at or name != self.name:
            raise ApiError(404, f"model: the model `{model}` does not exist; served: {', '.join(self.ids())} "
                                f"(or {self.name}@<budget> with a budget in (0, 1])", param="model",
                           code="model_not_found")
        if budget == AUTO:
            return None
        try:
            value = float(budget)
        except ValueError:
            raise bad_field("model", f"budget {budget!r} in {model!r} is not a number (use e.g. "
                                     f"{self.id_of(0.7)!r} or {self.name}@{AUTO})") from None
        if not math.isfinite(value) or not 0.0 < value <= 1.0:
            raise bad_field("model", f"budget {budget} in {model!r} is outside (0, 1] (a fraction of the full "
                                     f"model)")
        return value


__all__ = ["AUTO", "ModelNames", "format_budget"]
