"""Your own data: JSONL (text or chat), Parquet and ArrayRecord records through the grain pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from elastic_jax.data import ByteTokenizer, DataConfig, load_tokenizer, make_eval_batches, make_train_iterator
from elastic_jax.data.records import RecordSource, RecordSplit, encode_record
from elastic_jax.schema import ConfigError

CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _chat(i: int) -> dict:
    messages = [{"role": "user", "content": f"What is {i}+{i}?"},
                {"role": "assistant", "content": f"<think>{i}+{i}={2 * i}</think>{2 * i}"},
                {"role": "user", "content": "And doubled?"},
                {"role": "assistant", "content": f"{4 * i}."}]
    if i % 3 == 0:
        messages.insert(0, {"role": "system", "content": "Answer briefly."})
    return {"messages": messages, "id": i}


def _records() -> list[dict]:
    """Conversations and documents interleaved, as a user's JSONL file might hold them."""
    return [_chat(i) if i % 4 else {"text": f"Document {i}: " + "lorem ipsum " * (i % 5), "id": i} for i in range(30)]


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "\n", encoding="utf-8")  # a blank tail line
    return path


def _assistant_turns(records) -> list[str]:
    return [m["content"] for r in records if "messages" in r for m in r["messages"] if m["role"] == "assistant"]


def _trained_runs(batch) -> list[list[int]]:
    """Per row, the contiguous runs of targets that carry loss."""
    runs = []
    for targets, mask in zip(batch["targets"], batch["loss_mask"]):
        current: list[int] = []
        for token, m in zip(targets.tolist(), mask.tolist()):
            if m:
                current.append(token)
            elif current:
                runs.append(current)
                current = []
        if current:
            runs.append(current)
    return runs


def _chat_config(path, **changes) -> DataConfig:
    return DataConfig(reasoning_weight=0.0, text_weight=0.0, record_weight=1.0, record_paths=(str(path),),
                      **changes).validate()


def test_jsonl_chat_loss_only_on_assistant_tokens(tmp_path):
    """Through the pipeline with the byte tokenizer's simple template: every trained token is an assistant turn's
    (its text and the eos ending it), and every assistant turn is trained."""
    chats = [_chat(i) for i in range(1, 13)]
    path = _write_jsonl(tmp_path / "chat.jsonl", chats)
    tok = ByteTokenizer()
    iterator = make_train_iterator(_chat_config(path, record_eval_fraction=0.0), tok, seq_len=192, global_batch=2,
                                   seed=0, process_index=0, process_count=1)
    runs = [tok.decode(run) for _ in range(12) for run in _trained_runs(next(iterator))]
    expected = {content + tok.eos_token for content in _assistant_turns(chats)}
    assert set(runs) == expected  # 12 batches of 2 rows cover every conversation, each repeated
    # One conversation's rendering and mask, spelled out (the documented simple template).
    tokens, mask = encode_record(chats[0], tok, None)
    assert tok.decode(tokens) == ("<s><|user|>\nWhat is 1+1?\n<|assistant|>\n<think>1+1=2</think>2</s>\n"
                                  "<|user|>\nAnd doubled?\n<|assistant|>\n4.</s>\n")
    assert tok.decode(tokens[mask == 1]) == "<think>1+1=2</think>2</s>4.</s>"


def test_hf_tokenizer_chat_template_loss_only_on_assistant(tmp_path, make_bpe):
    """A tokenizer.json whose tokenizer_config.json has a chat template: the template renders the chat, and only
    what each assistant turn adds after its header (text and <|im_end|>) carries loss."""
    tok_dir = tmp_path / "tok"
    make_bpe(tok_dir / "tokenizer.json", ["<pad>", "<s>", "</s>", "<think>", "</think>", "<|im_start|>", "<|im_end|>"])
    (tok_dir / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML, "bos_token": "<s>",
                                                               "eos_token": "</s>"}))
    chats = [_chat(i) for i in range(1, 9)]
    path = _write_jsonl(tmp_path / "chat.jsonl", chats)
    cfg = _chat_config(path, tokenizer=str(tok_dir), record_eval_fraction=0.0)
    tok = load_tokenizer(cfg.tokenizer)
    iterator = make_train_iterator(cfg, None, seq_len=160, global_batch=2, seed=0, process_index=0, process_count=1)
    runs = {tok.decode(run) for _ in range(8) for run in _trained_runs(next(iterator))}
    assert runs == {content + "<|im_end|>\n" for content in _assistant_turns(chats)}
    tokens, mask = encode_record(chats[0], tok, CHATML)
    assert tok.decode(tokens).startswith("<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\n")
    assert tok.decode(tokens[mask == 0]).count("<|im_start|>assistant\n") == 2


def test_template_that_rewrites_earlier_turns_is_refused(tmp_path):
    with pytest.raises(ValueError, match="data.chat_template: .*rewrites earlier turns"):
        encode_record(_chat(1), ByteTokenizer(), "{{ messages[-1].content }}")


@pytest.fixture(scope="module")
def record_files(tmp_path_factory):
    """The same records as JSONL, Parquet (several row groups) and ArrayRecord (two shards)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from array_record.python.array_record_module import ArrayRecordWriter

    root = tmp_path_factory.mktemp("records")
    records = _records()
    jsonl = _write_jsonl(root / "data.jsonl", records)
    lines = [json.loads(line) for line in jsonl.read_text().splitlines() if line]
    parquet = root / "data.parquet"
    pq.write_table(pa.Table.from_struct_array(pa.array(lines)), parquet, row_group_size=7)
    shards = root / "array_record"
    shards.mkdir()
    for s, part in enumerate((lines[:13], lines[13:])):
        writer = ArrayRecordWriter(str(shards / f"data.array_record-{s:05d}-of-00002"), "group_size:1")
        for record in part:
            writer.write(json.dumps(record).encode("utf-8"))
        writer.close()
    return {"jsonl": jsonl, "parquet": parquet, "array_record": shards}


@pytest.mark.parametrize("fmt", ["parquet", "array_record"])
def test_parquet_and_array_record_yield_the_jsonl_examples(record_files, fmt):
    tok = ByteTokenizer()
    for split in ("train", "eval"):
        want, got = (RecordSource([record_files[k]], split, 0.1) for k in ("jsonl", fmt))
        assert len(got) == len(want) > 0
        for i in range(len(want)):
            (t0, m0), (t1, m1) = encode_record(want[i], tok, None), encode_record(got[i], tok, None)
            np.testing.assert_array_equal(t0, t1)
            np.testing.assert_array_equal(m0, m1)
    batches = {}
    for k in ("jsonl", fmt):
        cfg = _chat_config(record_files[k], record_eval_fraction=0.1)
        it = make_train_iterator(cfg, tok, seq_len=128, global_batch=4, seed=3, process_index=1, process_count=2)
        batches[k] = [next(it) for _ in range(6)] + make_eval_batches(cfg, tok, 128, 4, 2, 1, 2)
    for a, b in zip(batches["jsonl"], batches[fmt], strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_record_split_is_disjoint_and_complete():
    for n, fraction in ((30, 0.1), (7, 0.01), (1000, 0.013), (1, 0.5)):
        train, evals = RecordSplit(n, "train", fraction), RecordSplit(n, "eval", fraction)
        positions = [train.position(i) for i in range(len(train))] + [evals.position(i) for i in range(len(evals))]
        assert sorted(positions) == list(range(n))
        assert len(evals) == (min(int(np.ceil(n * fraction)), n - 1) if n > 1 else 0)


def test_record_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="data.record_paths: must name at least one"):
        DataConfig(record_weight=1.0).validate()
    with pytest.raises(ConfigError, match="data.chat_template"):
        DataConfig(chat_template=str(tmp_path / "missing.jinja")).validate()
    path = _write_jsonl(tmp_path / "bad.jsonl", [{"body": "no text field"}])
    with pytest.raises(ValueError, match="data.record_text_field: a record needs a 'text' string"):
        encode_record(RecordSource([path])[0], ByteTokenizer(), None)
    (tmp_path / "broken.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(ValueError, match=r"data.record_paths: .*broken.jsonl record 1 is not valid JSON"):
        RecordSource([tmp_path / "broken.jsonl"])[1]
