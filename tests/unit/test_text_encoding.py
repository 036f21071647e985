"""The request process prepares text-only items itself: its ids must be the model process's ids."""

from __future__ import annotations

import pickle

from vectorizer_service.core.errors import InputError
from vectorizer_service.core.items import Item
from vectorizer_service.core.settings import Settings
from vectorizer_service.core.text_encoding import TextEncoder
from vectorizer_service.model.served_models import Models
from vectorizer_service.server import MODEL_PROCESS
from vectorizer_service.serving.dispatcher import Dispatcher

ITEMS = [
    Item(texts=["a photo of a dog on the beach"]),
    Item(texts=["first part", "second part"]),
    Item(texts=["  leading and trailing spaces \n"]),
    Item(texts=["with its own instruction"], instruction="Find the matching caption"),
    Item(texts=["instruction ending in punctuation"], instruction="Find captions!"),
    Item(texts=["unicode: café — 東京 🐕"]),
    Item(),  # empty: the text "NULL"
    Item(texts=["word " * 3000]),  # truncated, keeping the prompt's end
]


def _dispatcher(models: Models, settings: Settings) -> Dispatcher:
    assert models.embedder is not None
    spec = pickle.loads(pickle.dumps(models.embedder.pre.text.to_dict()))  # as it crosses the pipe
    dispatcher = Dispatcher(settings, MODEL_PROCESS)
    dispatcher.text = {"embed": TextEncoder.from_dict(spec)}
    return dispatcher


def test_request_process_ids_equal_the_model_process_ids(models: Models, tiny_settings: Settings) -> None:
    assert models.embedder is not None
    dispatcher = _dispatcher(models, tiny_settings)
    for instruction in (None, "Represent this for retrieval"):
        mine = dispatcher.encode_texts(ITEMS, instruction)
        theirs = models.embedder.prepare(ITEMS, instruction)
        for k, (a, b) in enumerate(zip(mine, theirs, strict=True)):
            assert not isinstance(a, InputError) and not isinstance(b, InputError | type(None)), (a, b)
            assert a.ids == b.input_ids and a.cut == b.cut, (k, instruction)  # type: ignore[union-attr]
    assert len(mine[-1].ids) == tiny_settings.embed_max_length  # type: ignore[union-attr]
    assert mine[-1].cut > 0 and all(m.cut == 0 for m in mine[:-1])  # type: ignore[union-attr]


def test_request_process_refuses_what_the_model_process_refuses(models: Models, tiny_settings: Settings) -> None:
    assert models.embedder is not None
    dispatcher = _dispatcher(models, tiny_settings)
    bad = [Item(texts=["sneaky <|image_pad|> token"]), Item(texts=["nul \x00 byte"]),
           Item(texts=["x" * (tiny_settings.max_text_chars + 1)]), Item(texts=["fine"])]
    mine = dispatcher.encode_texts(bad, None)
    theirs = models.embedder.prepare(bad, None)
    for a, b in zip(mine[:3], theirs[:3], strict=True):
        assert isinstance(a, InputError) and isinstance(b, InputError)
        assert a.reason == b.reason and a.status == b.status
    assert mine[3].ids == theirs[3].input_ids  # type: ignore[union-attr]


def test_prompts_filled_into_a_rendered_shape_equal_jinja_renderings(models: Models, tiny_settings: Settings) -> None:
    """The per-shape cache must give exactly what the chat template gives, for every kind of prompt."""
    from vectorizer_service.core.prompts import embedding_prompt, rerank_prompt

    assert models.embedder is not None
    text = TextEncoder.from_dict(models.embedder.pre.text.to_dict())
    prompts = [embedding_prompt(item, tiny_settings.default_instruction) for item in ITEMS]
    prompts += [embedding_prompt(Item(texts=["caption"], images=[b"x"], videos=[b"y"]), "Describe.")]
    prompts += [rerank_prompt(q, d, instr, tiny_settings.rerank_instruction)
                for q in (Item(texts=["query"]), Item(images=[b"x"]))
                for d in (Item(texts=["doc one", " doc two "]), Item(), Item(images=[b"x"], texts=["cap"]))
                for instr in (None, "Is it relevant?")]
    prompts += [embedding_prompt(Item(texts=["", "empty first part"]), "Describe.")]
    for _ in range(2):  # the first pass fills the cache, the second reads it
        for prompt in prompts:
            assert text.render(prompt.messages) == text._render_jinja(prompt.messages)
    assert any(v is not None for v in text._shapes.values())  # the fast path is taken


def test_image_ids_expanded_after_tokenizing_equal_tokenizing_the_expanded_text(models: Models) -> None:
    from tests.media_factory import image_bytes, video_bytes
    from vectorizer_service.core.prompts import embedding_prompt, rerank_prompt

    embedder, reranker = models.embedder, models.reranker
    assert embedder is not None and reranker is not None
    pre = embedder.pre
    items = [Item(images=[image_bytes("PNG", (96, 64)), image_bytes("JPEG", (320, 240))], texts=["two images"]),
             Item(images=[image_bytes("PNG", (64, 64))], videos=[video_bytes(frames=4, fps=2)], texts=["mixed"]),
             Item(texts=["no image at all"])]
    decoded = [pre.decode(item) for item in items]
    prompts = [embedding_prompt(d, "Describe.") for d in decoded]
    prompts.append(rerank_prompt(decoded[0], decoded[1], None, "Judge."))
    for prompt in prompts:
        whole = pre.text.tokenize([pre.render(prompt)])[0]  # every placeholder in the text
        single = pre.text.tokenize([pre.render(prompt, expand_images=False)])[0]
        assert pre.expand_image_ids(single, prompt.images) == whole
        assert len(single) < len(whole) or not prompt.images
