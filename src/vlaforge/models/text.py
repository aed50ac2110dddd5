"""Text tokenizers for the VLA prompt, and OpenVLA's prompt format.

- `ByteTokenizer`: self-contained and fully described by a few integers saved in `config.json` (nothing is
  downloaded): ids 0 `<unk>`, 1 `<s>`, 2 `</s>`, then the 256 bytes (3..258); the action bins occupy the
  last `n_bins` ids of the vocab (vocab 515 = 3 + 256 + 256 in the tiny preset).
- `LlamaTokenizer`: the Llama-2 tokenizer read from a local directory (`tokenizer.json`, local files only).
  OpenVLA appends token 29871 (the SentencePiece "▁" piece) when the prompt does not end with it, because
  the model was trained with it before the first action token; `append_empty_token` implements that rule.

Both return prompt ids *without* BOS: the backbone inserts BOS itself, then the image patches, then these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlaforge.errors import InputError

LLAMA_EMPTY_TOKEN = 29871  # "▁" in the Llama-2 SentencePiece vocab


def format_prompt(instruction: str, style: str = "openvla") -> str:
    """The prompt for `instruction`.

    Args:
        instruction: the task in words.
        style: "openvla" (`In: What action should the robot take to {instruction.lower()}?\\nOut:`) or
            "instruction" (the lower-cased instruction alone; see `Preset.prompt`).
    """
    if style == "instruction":
        return instruction.lower()
    return f"In: What action should the robot take to {instruction.lower()}?\nOut:"


def append_empty_token(ids: list[int], empty_id: int = LLAMA_EMPTY_TOKEN) -> list[int]:
    """OpenVLA's inference rule: append `empty_id` (29871) unless the ids already end with it."""
    ids = list(ids)
    if not ids or ids[-1] != empty_id:
        ids.append(empty_id)
    return ids


class ByteTokenizer:
    """UTF-8 bytes as ids 3..258 after `<unk>`=0, `<s>`=1, `</s>`=2.

    Args:
        vocab_size: total vocab of the language model (>= 259 + the action bins).
    """

    kind = "byte"
    unk_id, bos_id, eos_id, pad_id = 0, 1, 2, 0
    offset = 3

    def __init__(self, vocab_size: int = 515, prompt: str = "openvla"):
        if vocab_size < self.offset + 256:
            raise InputError(f"a byte tokenizer needs vocab_size >= 259, got {vocab_size}")
        self.vocab_size = int(vocab_size)
        self.prompt = prompt

    def encode(self, text: str) -> list[int]:
        """Text -> ids (no BOS, no EOS)."""
        return [b + self.offset for b in text.encode("utf-8")]

    def decode(self, ids: list[int]) -> str:
        """Ids -> text; special and action ids are skipped."""
        data = bytes(i - self.offset for i in ids if self.offset <= i < self.offset + 256)
        return data.decode("utf-8", errors="replace")

    def encode_prompt(self, instruction: str) -> list[int]:
        return self.encode(format_prompt(instruction, self.prompt))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "vocab_size": self.vocab_size}


class LlamaTokenizer:
    """The Llama-2 tokenizer from a local directory holding `tokenizer.json` (no hub access).

    Args:
        path: the directory (or the `tokenizer.json` file itself).
    """

    kind = "llama"

    def __init__(self, path: str | Path, prompt: str = "openvla"):
        from transformers import PreTrainedTokenizerFast

        path = Path(path)
        file = path if path.is_file() else path / "tokenizer.json"
        if not file.is_file():
            raise InputError(
                f"{file}: no tokenizer.json; the Llama presets need a local directory with the Llama-2 "
                "tokenizer: --tokenizer-path DIR (tokenizer_path=DIR from Python), or a preset with tokenizer='byte'"
            )
        self.path = str(file.parent)
        self.prompt = prompt
        self.tok = PreTrainedTokenizerFast(tokenizer_file=str(file), bos_token="<s>", eos_token="</s>")
        self.bos_id = self.tok.convert_tokens_to_ids("<s>")
        self.eos_id = self.tok.convert_tokens_to_ids("</s>")
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        self.vocab_size = len(self.tok)

    def encode(self, text: str) -> list[int]:
        """Text -> ids without special tokens."""
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def encode_prompt(self, instruction: str) -> list[int]:
        """The prompt's ids with OpenVLA's trailing 29871 (no BOS; the backbone adds it)."""
        return append_empty_token(self.encode(format_prompt(instruction, self.prompt)))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path}


def reserved_ids(kind: str) -> int:
    """How many leading ids a tokenizer of `kind` keeps for itself, which no action id may take: the byte
    tokenizer's specials and bytes (259); Llama's `<unk>`, `<s>`, `</s>` (3; its other text ids are
    rare enough to be overwritten by action tokens, as OpenVLA and pi0-FAST do)."""
    return ByteTokenizer.offset + 256 if kind == "byte" else 3


def build_text_tokenizer(
    kind: str, vocab_size: int, path: str | None = None, prompt: str = "openvla"
) -> ByteTokenizer | LlamaTokenizer:
    """The tokenizer a preset names.

    Raises:
        ValueError: a Llama tokenizer without a path, or an unknown kind.
    """
    if kind == "byte":
        return ByteTokenizer(vocab_size, prompt)
    if kind == "llama":
        if path is None:
            raise InputError(
                "this preset uses the Llama-2 tokenizer: give --tokenizer-path DIR, a local directory with "
                "tokenizer.json (tokenizer_path=DIR from Python), or use a preset with tokenizer='byte' (the "
                "self-contained byte tokenizer)"
            )
        return LlamaTokenizer(path, prompt)
    raise InputError(f"unknown text tokenizer {kind!r}; choose 'byte' or 'llama'")
