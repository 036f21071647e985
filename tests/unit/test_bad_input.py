"""Bad input gets an error naming the item and the reason, before expensive work; neighbours survive."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.media_factory import image_bytes, png_bomb, video_bytes
from vectorizer_service.core.errors import InputError
from vectorizer_service.core.items import Item
from vectorizer_service.core.settings import Settings
from vectorizer_service.core.vector_encoding import EncodedVector
from vectorizer_service.model.served_models import Models

GOOD = image_bytes("PNG")


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        (Item(images=[b""]), "image 0 is empty"),
        (Item(images=[b"not an image at all"]), "not a recognised image"),
        (Item(images=[GOOD[: len(GOOD) // 2]]), "truncated or corrupt"),
        (Item(images=[b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n"]), "not a recognised image"),
        (Item(images=[png_bomb(100_000, 100_000)]), "over the limit"),
        (Item(images=[png_bomb(20_000, 20)]), "aspect ratio"),
        (Item(images=["/nonexistent/picture.png"]), "cannot read image 0 file"),
        (Item(videos=[b""]), "video 0 is empty"),
        (Item(videos=[b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64]), "video 0"),
        (Item(videos=[image_bytes("PNG")]), "video 0"),
        (Item(videos=[[]]), "has no frames"),
        (Item(texts=["a\x00b"]), "NUL"),
        (Item(texts=["fine", "a\ud800b"]), "text 1 contains a lone surrogate"),
        (Item(texts=["a"], instruction="\udfff"), "instruction contains a lone surrogate"),
        (Item(texts=["look: <|image_pad|>"]), "reserved token"),
        (Item(texts=[123]), "not a string"),  # type: ignore[list-item]
    ],
)
def test_bad_item_is_refused_with_reason(models: Models, item: Item, reason: str) -> None:
    assert models.embedder is not None
    [result] = models.embedder.embed([item])
    assert isinstance(result, InputError), result
    assert reason in str(result)
    assert str(result).startswith("item 0")


def test_one_bad_item_never_sinks_its_neighbours(models: Models) -> None:
    assert models.embedder is not None
    items = [Item(texts=["fine"]), Item(images=[b"garbage"]), Item(images=[GOOD]), Item(texts=["x" * 10])]
    results = models.embedder.embed(items)
    assert isinstance(results[1], InputError) and str(results[1]).startswith("item 1: image 0")
    alone = [models.embedder.embed([items[i]])[0] for i in (0, 2, 3)]
    for i, solo in zip((0, 2, 3), alone, strict=True):
        assert isinstance(results[i], EncodedVector)
        assert float(results[i].values @ solo.values) > 0.9999


def test_bomb_is_refused_before_decoding(models: Models) -> None:
    """A 40-gigapixel claim costs header parsing only."""
    assert models.embedder is not None
    start = time.perf_counter()
    [result] = models.embedder.embed([Item(images=[png_bomb(200_000, 200_000)])])
    assert isinstance(result, InputError) and result.status == 413
    assert time.perf_counter() - start < 2.0


def test_video_limits(tiny_settings: Settings) -> None:
    from vectorizer_service.model.media import decode_video

    strict = tiny_settings.model_copy(update={"max_video_seconds": 2.0, "max_video_source_frames": 1000})
    with pytest.raises(InputError, match="lasts"):
        decode_video(video_bytes(frames=12, fps=2), strict)
    few = tiny_settings.model_copy(update={"max_video_source_frames": 5})
    with pytest.raises(InputError, match="frames"):
        decode_video(video_bytes(frames=12, fps=2), few)
    small = tiny_settings.model_copy(update={"max_video_frame_pixels": 1000})
    with pytest.raises(InputError, match="pixels"):
        decode_video(video_bytes(frames=4), small)


def test_limits_on_item_shape(models: Models, tiny_settings: Settings) -> None:
    assert models.embedder is not None
    many = Item(images=[GOOD] * (tiny_settings.max_images_per_item + 1))
    long_text = Item(texts=["x" * (tiny_settings.max_text_chars + 1)])
    r1, r2 = models.embedder.embed([many, long_text])
    assert isinstance(r1, InputError) and "images in one item" in str(r1)
    assert isinstance(r2, InputError) and "characters" in str(r2)


def test_dimensions_and_encoding_checked_first(models: Models) -> None:
    assert models.embedder is not None
    with pytest.raises(InputError, match="dimensions"):
        models.embedder.embed([Item(texts=["a"])], dimensions=16)
    with pytest.raises(InputError, match="encoding"):
        models.embedder.embed([Item(texts=["a"])], encoding="int2")


def test_long_text_is_truncated_keeping_the_prompt(models: Models, tiny_settings: Settings) -> None:
    """Past the max length, text is cut; special tokens and the generation prompt stay."""
    from vectorizer_service.model.embedder import Embedder

    short = Embedder(models.embedder.ckpt, tiny_settings.model_copy(update={"embed_max_length": 96}))  # type: ignore[union-attr]
    [enc] = short.prepare([Item(texts=["word " * 500])])
    assert not isinstance(enc, InputError)
    assert enc.length == 96
    tok = short.pre.tokenizer
    assert tok.decode(enc.input_ids).endswith("word <|im_end|>\n<|im_start|>assistant\n")
    [vec] = short.embed([Item(texts=["word " * 500])])
    assert np.isfinite(vec.values).all()  # type: ignore[union-attr]


def test_long_text_cut_at_the_start_keeps_the_instruction_or_is_refused(models: Models,
                                                                        tiny_settings: Settings) -> None:
    from vectorizer_service.model.embedder import Embedder

    short = Embedder(models.embedder.ckpt, tiny_settings.model_copy(update={"embed_max_length": 96}))  # type: ignore[union-attr]
    text = "first " + "word " * 100 + "last"
    [whole] = Embedder(models.embedder.ckpt, tiny_settings).prepare([Item(texts=[text])])  # type: ignore[union-attr]
    [enc] = short.prepare([Item(texts=[text])], truncate="start")
    assert not isinstance(enc, InputError) and not isinstance(whole, InputError)
    assert enc.length == 96 and enc.cut == whole.length - 96 and whole.cut == 0
    decoded = short.pre.tokenizer.decode(enc.input_ids)
    assert decoded.startswith("<|im_start|>system\nRepresent the user's input.<|im_end|>\n<|im_start|>user\n")
    assert "first" not in decoded and decoded.endswith("word last<|im_end|>\n<|im_start|>assistant\n")
    [refused] = short.prepare([Item(texts=[text])], truncate="none")
    assert isinstance(refused, InputError) and refused.limit == "QVL_EMBED_MAX_LENGTH"
    assert f"{whole.length} tokens" in str(refused) and "item 0" in str(refused)


def test_vision_tokens_past_max_length_are_an_error(models: Models, tiny_settings: Settings) -> None:
    from vectorizer_service.model.embedder import Embedder

    short = Embedder(models.embedder.ckpt, tiny_settings.model_copy(update={"embed_max_length": 64}))  # type: ignore[union-attr]
    [res] = short.embed([Item(images=[image_bytes("PNG", (640, 480))])])
    assert isinstance(res, InputError) and "maximum length" in str(res)


def test_rerank_bad_document_and_bad_query(models: Models) -> None:
    reranker = models.reranker
    assert reranker is not None
    result = reranker.rerank(Item(texts=["q"]), [Item(texts=["a"]), Item(images=[b"xx"]), Item(texts=["b"])])
    assert result.scores[1] is None and result.scores[0] is not None and result.scores[2] is not None
    assert "item 1" in str(result.errors[1])
    assert 1 not in result.ranking
    with pytest.raises(InputError, match="query: image 0"):
        reranker.rerank(Item(images=[b"xx"]), [Item(texts=["a"])])
    with pytest.raises(InputError, match="top_k"):
        reranker.rerank(Item(texts=["q"]), [Item(texts=["a"])], top_k=0)


def test_lone_surrogates_are_input_errors_on_every_text_path(models: Models, tiny_settings: Settings) -> None:
    """Text the tokenizer cannot take is the caller's problem, named, wherever it enters."""
    from vectorizer_service.core.text_encoding import TextEncoder

    assert models.embedder is not None and models.reranker is not None
    result = models.reranker.rerank(Item(texts=["q"]), [Item(texts=["a"]), Item(texts=["\ud800"])])
    assert result.scores[0] is not None and "item 1: text 0 contains a lone surrogate" in str(result.errors[1])
    with pytest.raises(InputError, match="query: text 0 contains a lone surrogate"):
        models.reranker.rerank(Item(texts=["\ud800"]), [Item(texts=["a"])])
    # Past the cheap checks (a caller that skips validate), tokenizing still fails per prompt.
    encoder = TextEncoder.from_dict(models.embedder.pre.text.to_dict())
    ids = encoder.tokenize(["fine", "bad \ud800", "also fine"])
    assert isinstance(ids[0], list) and isinstance(ids[2], list)
    assert isinstance(ids[1], InputError) and "cannot be tokenized" in str(ids[1])
