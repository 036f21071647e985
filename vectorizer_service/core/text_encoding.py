"""Chat template, tokenizer and truncation: the text half of preprocessing, without torch.

The model process builds a ``TextEncoder`` from the checkpoint's processor and hands its
``spec`` to the request process, which builds the same encoder from it. Text-only items are
then rendered and tokenized where they arrive, and both processes produce identical ids
because they run this one implementation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from tokenizers import Tokenizer
from transformers.utils.chat_template_utils import render_jinja_template

from vectorizer_service.core.errors import InputError
from vectorizer_service.core.prompts import Prompt

# What to do with an item longer than the maximum length: refuse it (naming the limit), or cut
# text tokens from the start or the end of its text. The caller always learns of a cut.
Truncate = Literal["none", "start", "end"]
TRUNCATE_SIDES: tuple[str, ...] = ("none", "start", "end")


def check_truncate(side: str) -> str:
    if side not in TRUNCATE_SIDES:
        raise InputError(f"truncate must be one of {', '.join(TRUNCATE_SIDES)}, got {side!r}")
    return side


@dataclass(frozen=True, slots=True)
class TextIds:
    """A text-only item's token ids, and how many of its tokens truncation removed (0: none)."""

    ids: list[int]
    cut: int = 0


@dataclass(frozen=True)
class TextSpec:
    """Everything the text stage needs from a checkpoint, as plain data."""

    chat_template: str
    tokenizer_json: str
    special_tokens: dict[str, Any]  # the tokenizer's special tokens map, passed to the template
    keep_ids: list[int]  # special, image and video token ids: never cut by truncation
    reserved_tokens: list[str]  # vision placeholders that user text may not contain
    max_length: int
    max_length_setting: str = "QVL_EMBED_MAX_LENGTH"  # where max_length comes from (named in refusals)


class TextEncoder:
    def __init__(self, spec: TextSpec) -> None:
        self.spec = spec
        # Our own Rust tokenizer, never shared with transformers (which leaves padding on in
        # the tokenizer it owns after a padded call, silently padding every later id list).
        self.backend = Tokenizer.from_str(spec.tokenizer_json)
        self.backend.no_padding()
        self.backend.no_truncation()
        self.max_length = spec.max_length
        self.keep_ids = frozenset(spec.keep_ids)
        self._shapes: dict[tuple[Any, ...], list[str] | None] = {}
        self.keep_suffix = self._generation_suffix_length()
        self.user_prefix = self._user_turn_prefix()

    @classmethod
    def from_processor(cls, processor: Any, max_length: int,
                       max_length_setting: str = "QVL_EMBED_MAX_LENGTH") -> TextEncoder:
        tok = processor.tokenizer
        template = processor.chat_template
        if isinstance(template, dict):
            template = template["default"]
        special = {k: str(v) if not isinstance(v, list) else [str(x) for x in v]
                   for k, v in tok.special_tokens_map.items()}
        keep = sorted(set(tok.all_special_ids) | {processor.image_token_id, processor.video_token_id})
        reserved = [processor.image_token, processor.video_token, processor.vision_start_token,
                    processor.vision_end_token]
        return cls(TextSpec(chat_template=template, tokenizer_json=tok.backend_tokenizer.to_str(),
                            special_tokens=special, keep_ids=keep, reserved_tokens=reserved, max_length=max_length,
                            max_length_setting=max_length_setting))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TextEncoder:
        return cls(TextSpec(**data))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self.spec)

    def _generation_suffix_length(self) -> int:
        """Tokens after the user's content ("<|im_end|>\n<|im_start|>assistant\n" for Qwen: 5).

        Truncation keeps them: the pooled last token belongs to this suffix.
        """
        text = self.render([{"role": "user", "content": [{"type": "text", "text": "\x01"}]}])
        return len(self.backend.encode(text.split("\x01", 1)[1], add_special_tokens=False).ids)

    def _user_turn_prefix(self) -> list[int]:
        """The ids that open the user's turn before its content ("<|im_start|>user\\n" for Qwen): a
        cut at the start begins after them, so the instruction (the system turn) stays whole."""
        text = self.render([{"role": "user", "content": [{"type": "text", "text": "\x01"}]}])
        return self.backend.encode(text.split("\x01", 1)[0], add_special_tokens=False).ids

    def render(self, messages: list[dict[str, Any]]) -> str:
        """The chat template's text, as transformers' processor renders it (generation prompt on).

        Jinja costs about 0.1 ms a prompt, as much as the rest of a small request. Prompts of one
        shape (roles and part types) differ only in their texts, so each shape is rendered once
        with placeholders and then filled in, where that is provably the same (``_segments``).
        """
        shape = tuple((m["role"], tuple(p.get("type", "text") for p in m["content"])) for m in messages)
        texts = [p["text"] for m in messages for p in m["content"] if "text" in p]
        if shape not in self._shapes:
            self._shapes[shape] = self._segments(messages)
        segments = self._shapes[shape]
        if segments is None or len(segments) != len(texts) + 1 or not all(texts):
            return self._render_jinja(messages)
        out = [segments[0]]
        for text, segment in zip(texts, segments[1:], strict=True):
            out += (text, segment)
        return "".join(out)

    def _render_jinja(self, messages: list[dict[str, Any]]) -> str:
        rendered, _ = render_jinja_template(conversations=[messages], chat_template=self.spec.chat_template,
                                            add_generation_prompt=True, **self.spec.special_tokens)
        return rendered[0]

    def _segments(self, messages: list[dict[str, Any]]) -> list[str] | None:
        """The template's text around each text part, or None where the template does more than
        insert texts verbatim (strips or rewrites them: the two probes would then disagree)."""
        found = []
        for pad in ("", " \n "):
            k = iter(range(1 << 16))
            probe = [{**m, "content": [{**p, "text": f"{pad}\x02{next(k)}\x03{pad}"} if "text" in p else p
                                       for p in m["content"]]} for m in messages]
            text = self._render_jinja(probe)
            n = sum(1 for m in probe for p in m["content"] if "text" in p)
            segments = []
            for i in range(n):
                marker = f"{pad}\x02{i}\x03{pad}"
                if text.count(marker) != 1:
                    return None
                head, text = text.split(marker, 1)
                segments.append(head)
            found.append([*segments, text])
        return found[0] if found[0] == found[1] else None

    def check_texts(self, texts: list[str]) -> None:
        """Placeholders in user text would desynchronise tokens and vision features."""
        for i, text in enumerate(texts):
            for token in self.spec.reserved_tokens:
                if token in text:
                    raise InputError(f"text {i} contains the reserved token {token!r}")

    def tokenize(self, texts: list[str]) -> list[list[int] | InputError]:
        """Straight through the Rust backend (same ids as the HF call, less overhead).

        A text the backend refuses (``Item.validate`` catches the known causes first) is an
        ``InputError`` in its place: the batch is retried text by text, so its neighbours keep theirs.
        """
        try:
            if len(texts) == 1:  # no hand-off to the batch thread pool for one text
                return [self.backend.encode(texts[0], add_special_tokens=False).ids]
            return [enc.ids for enc in self.backend.encode_batch(texts, add_special_tokens=False)]
        except Exception:
            if len(texts) == 1:
                return [self._refused(texts[0])]
        return [ids for text in texts for ids in self.tokenize([text])]

    @staticmethod
    def _refused(text: str) -> InputError:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            return InputError(f"the text cannot be tokenized: it is not valid Unicode ({exc.reason} at "
                              f"character {exc.start})")
        return InputError("the text cannot be tokenized")

    def truncate(self, ids: list[int], side: str = "end") -> list[int]:
        """``ids`` within ``max_length``: past it, refused (``side`` "none") or cut from the start or
        the end of the text, keeping every special, image and video token and the generation prompt
        (the pooled last token belongs to it)."""
        if len(ids) <= self.max_length:
            return ids
        setting = self.spec.max_length_setting
        if side == "none":
            raise InputError(f"{len(ids)} tokens with its instruction and prompt, over the maximum length of "
                             f"{self.max_length} ({setting}); send less text, or ask for truncation",
                             limit=setting)
        head, tail = ids[: -self.keep_suffix], ids[-self.keep_suffix:]
        budget = self.max_length - self.keep_suffix
        special = sum(1 for t in head if t in self.keep_ids)
        if special > budget:
            raise InputError(
                f"needs {special + self.keep_suffix} image/video and control tokens, more than the "
                f"maximum length {self.max_length}; send smaller images or fewer frames",
                status=413, limit=setting,
            )
        if side == "start":
            head = self._cut_start(head, len(ids) - self.max_length)
        return self._cut_end(head, budget - special) + tail

    def _cut_end(self, head: list[int], keep_text: int) -> list[int]:
        """The first ``keep_text`` text tokens of ``head``, and all its special ones."""
        out = []
        for t in head:
            if t in self.keep_ids:
                out.append(t)
            elif keep_text > 0:
                out.append(t)
                keep_text -= 1
        return out

    def _cut_start(self, head: list[int], drop: int) -> list[int]:
        """``head`` without the first ``drop`` text tokens of the user's content (what is left to drop
        when the content holds fewer, an instruction longer than the maximum, ``_cut_end`` takes)."""
        start = self._content_start(head)
        out = head[:start]
        for t in head[start:]:
            if drop and t not in self.keep_ids:
                drop -= 1
            else:
                out.append(t)
        return out

    def _content_start(self, head: list[int]) -> int:
        """Where the user's content begins: after the last opening of a turn, past the ids it shares
        with ``user_prefix`` (the content's first characters may merge with the prefix's newline)."""
        if not self.user_prefix or self.user_prefix[0] not in head:
            return 0
        k = len(head) - 1 - head[::-1].index(self.user_prefix[0])
        m = 0
        while m < len(self.user_prefix) and k + m < len(head) and head[k + m] == self.user_prefix[m]:
            m += 1
        return k + m

    def encode_texts(self, prompts: list[Prompt], truncate: str = "end") -> list[TextIds | InputError]:
        """Ids of text-only prompts (no vision placeholders to expand); errors per prompt."""
        ids = self.tokenize([self.render(p.messages) for p in prompts])
        out: list[TextIds | InputError] = []
        for seq in ids:
            if isinstance(seq, InputError):
                out.append(seq)
                continue
            try:
                kept = self.truncate(seq, truncate)
                out.append(TextIds(kept, len(seq) - len(kept)))
            except InputError as exc:
                out.append(exc)
        return out
