"""From one item and a chunking to its parts: each an item of its own, with its locator.

The request process plans; what it cannot know without opening a source (a document's page
count, a video's length) the model process reads first (``ProbeCall``). Text passages are cut
here, with the model's own tokenizer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from vectorizer_service.core.chunking import Chunking, Locator, Passages, video_windows, window_count
from vectorizer_service.core.errors import InputError
from vectorizer_service.core.items import Item
from vectorizer_service.core.parts import DocumentPage, SourceFacts, VideoClip
from vectorizer_service.core.settings import Settings

Part = tuple[Item, Locator]


@dataclass(frozen=True)
class ChunkTarget:
    """What chunking splits in one item: its document, its video, or its text at ``text``."""

    source: DocumentPage | VideoClip | None = None
    text: int | None = None

    @property
    def needs_facts(self) -> bool:
        """A whole document or video: its page count or length is read before it is split."""
        return isinstance(self.source, VideoClip) or (isinstance(self.source, DocumentPage)
                                                      and self.source.page is None)


def chunk_target(item: Item, chunking: Chunking) -> ChunkTarget:
    """The part of ``item`` that ``chunking`` splits, or an error naming what is missing."""
    if chunking.kind == "pages":
        documents = [src for src in item.images if isinstance(src, DocumentPage)]
        if len(documents) != 1:
            raise InputError(f'chunking "pages" splits one document: the item has {len(documents)}')
        return ChunkTarget(source=documents[0])
    if chunking.kind == "video":
        if len(item.videos) != 1:
            raise InputError(f'chunking "video" splits one video: the item has {len(item.videos)}')
        video = item.videos[0]
        if isinstance(video, list | tuple):
            raise InputError('chunking "video" splits a video file: a frame list cannot be split')
        if isinstance(video, VideoClip):
            if video.start_s is not None or video.end_s is not None:
                raise InputError('chunking "video" splits a whole video: this one is already a span')
            return ChunkTarget(source=video)
        return ChunkTarget(source=VideoClip(video))
    if not item.texts:
        raise InputError('chunking "text" splits the item\'s last text: the item has none')
    return ChunkTarget(text=len(item.texts) - 1)


def expand(item: Item, target: ChunkTarget, chunking: Chunking, facts: SourceFacts | None,
           passages: Passages, settings: Settings) -> list[Part]:
    """The item's parts in order: the split part replaced by each chunk, the other parts kept."""
    source = target.source
    if isinstance(source, DocumentPage):
        return _pages(item, source, chunking, facts)
    if isinstance(source, VideoClip):
        assert facts is not None and facts.seconds is not None
        count = window_count(facts.seconds, chunking.seconds, chunking.overlap)
        if count > settings.max_video_windows:
            raise InputError(f"the video ({facts.seconds:.1f} s) makes {count} windows of {chunking.seconds} s, over "
                             f"the limit of {settings.max_video_windows}", status=413, limit="QVL_MAX_VIDEO_WINDOWS")
        return [(dataclasses.replace(item, videos=[VideoClip(source.source, start, end)]),
                 {"start_s": start, "end_s": end})
                for start, end in video_windows(facts.seconds, chunking.seconds, chunking.overlap)]
    assert target.text is not None
    text = item.texts[target.text]
    spans = passages.spans(text, chunking.tokens, int(chunking.overlap))
    if len(spans) > settings.max_text_passages:
        raise InputError(f"the text makes {len(spans)} passages of {chunking.tokens} tokens, over the limit of "
                         f"{settings.max_text_passages}", status=413, limit="QVL_MAX_TEXT_PASSAGES")
    head = item.texts[:target.text]
    return [(dataclasses.replace(item, texts=[*head, text[start:end]]), {"char_start": start, "char_end": end})
            for start, end in spans]


def _pages(item: Item, document: DocumentPage, chunking: Chunking, facts: SourceFacts | None) -> list[Part]:
    if document.page is not None:  # one page named: that page is the one chunk
        numbers = [document.page]
    else:
        assert facts is not None and facts.pages is not None
        if chunking.max_pages is not None and facts.pages > chunking.max_pages:
            raise InputError(f"the document has {facts.pages} pages, over the chunking's max_pages of "
                             f"{chunking.max_pages}", status=413, limit="max_pages")
        numbers = list(range(1, facts.pages + 1))
    out = []
    for number in numbers:
        images = [DocumentPage(src.source, number) if src is document else src for src in item.images]
        out.append((dataclasses.replace(item, images=images), {"page": number}))
    return out
