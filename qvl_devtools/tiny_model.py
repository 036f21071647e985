"""Deterministic Qwen3-VL checkpoints with random weights, built without a model hub.

``tiny``: a few MB, for demos and tests on any machine. ``2b``: the shape of
Qwen3-VL-Embedding-2B (DESIGN.md), for benchmarks: compute cost does not depend on the
weight values. The tokenizer is byte-level BPE with Qwen's special tokens and single
``yes``/``no`` tokens (the reranker reads those rows of the output head), trained on a small
built-in corpus so that sequences have realistic token counts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2VLImageProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_end|>", "<|im_start|>", "<|vision_start|>", "<|vision_end|>",
                  "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
CHAT_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}{%- else %}"
    "{%- for content in message['content'] %}"
    "{%- if content['type'] == 'image' or 'image' in content %}{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif content['type'] == 'video' or 'video' in content %}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in content %}{{- content['text'] }}{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {
        "text": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16, vocab_size=None, mrope_section=[2, 3, 3]),
        "vision": dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                       num_position_embeddings=256, deepstack_visual_indexes=[0]),
    },
    "2b": {
        "text": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                     num_key_value_heads=8, head_dim=128, vocab_size=151936, mrope_section=[24, 20, 20]),
        "vision": dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2048,
                       num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17]),
    },
}


# Training text for the tiny tokenizer: the prompt scaffolding, the benchmark and demo vocabulary and
# everyday English, so that sequences have realistic token counts (about one token per word, as
# Qwen's 151k-entry vocabulary gives) rather than one token per byte.
CORPUS = [
    "Represent the user's input.", "Retrieve images or text relevant to the user's query.",
    "Given a search query, retrieve relevant candidates that answer the query.",
    'Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
    'Note that the answer can only be "yes" or "no".', "<Instruct>: ", "<Query>:", "\n<Document>:",
    "system\n", "user\n", "assistant\n", "NULL", "yes", "no", "<0.5 seconds>", "<1.5 seconds>",
    "the a of and to in is for on with as by at from that this be are was it an or which image video "
    "search query document retrieval model vector database table row column index postgres weaviate "
    "camera photo street night city river mountain dog cat woman man child beach sunset forest red "
    "blue green yellow black white small large old new fast slow open closed bright dark quiet loud "
    "warm cold picture pattern stripes rings grid clip frame scene people car house tree water sky "
    "playing walking running sitting standing looking holding wearing dress shirt food table chair "
    "report revenue quarter grew sales market price product customer order service team year month "
    "what where when who how why show find me all any some one two three four five first last",
]


def build_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1024, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=SPECIAL_TOKENS)
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:], chat_template=CHAT_TEMPLATE,
    )


def build_processor() -> Qwen3VLProcessor:
    tokenizer = build_tokenizer()
    image_processor = Qwen2VLImageProcessor(
        patch_size=16, temporal_patch_size=2, merge_size=2, min_pixels=3136, max_pixels=1003520,
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    video_processor = Qwen3VLVideoProcessor(
        patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    return Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                            video_processor=video_processor, chat_template=CHAT_TEMPLATE)


def build_config(shape: str, tokenizer: PreTrainedTokenizerFast) -> Qwen3VLConfig:
    spec = SHAPES[shape]
    text = dict(spec["text"])
    mrope = text.pop("mrope_section")
    text["vocab_size"] = text["vocab_size"] or len(tokenizer)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    return Qwen3VLConfig(
        text_config=dict(
            text, hidden_act="silu", rms_norm_eps=1e-6, max_position_embeddings=32768, attention_bias=False,
            rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": mrope,
                             "mrope_interleaved": True},
        ),
        vision_config=dict(spec["vision"], hidden_act="gelu_pytorch_tanh", patch_size=16, spatial_merge_size=2,
                           temporal_patch_size=2, in_channels=3),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )


def build_model(shape: str, processor: Qwen3VLProcessor, *, seed: int = 0,
                dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
                ) -> Qwen3VLForConditionalGeneration:
    config = build_config(shape, processor.tokenizer)
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen3VLForConditionalGeneration(config)
    return model.to(dtype).eval()


def build_checkpoint(directory: str | Path, *, shape: str = "tiny", seed: int = 0) -> Path:
    """Write a loadable checkpoint (config, weights, tokenizer, processors); reused when present."""
    out = Path(directory)
    stamp = out / "qvl-tiny.json"
    wanted = {"shape": shape, "seed": seed, "builder": 2}
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return out
    out.mkdir(parents=True, exist_ok=True)
    processor = build_processor()
    model = build_model(shape, processor, seed=seed)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    stamp.write_text(json.dumps(wanted))
    return out
