"""Locally built stand-ins for the two models the project loads, with random weights.

Nothing can be downloaded where the tests and the offline demo run, so this writes two
folders that load through the real models' code path (``SentenceTransformer(path)``): a
CLIP laid out like ``clip-ViT-B-32`` and a DistilBERT student like
``clip-ViT-B-32-multilingual-v1``, both 512-d by default (``dim=768`` gives a pair shaped
like the larger CLIP models, for tests of models side by side); ``full_size=True`` gives the
real sizes and a whole-word vocabulary for timing (docs/images-and-embeddings.md).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from resources.storage.files import Staged

DIM = 512
#: The vocabulary size of the real text student's tokenizer (distilbert-base-multilingual-cased).
FULL_VOCAB_SIZE = 119_547
_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _byte_level_chars() -> list[str]:
    """The 256 printable stand-ins GPT-2/CLIP byte-level BPE uses for the bytes 0-255."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def _clip_vocab() -> dict[str, int]:
    chars = _byte_level_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + 256 for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = 512
    vocab["<|endoftext|>"] = 513
    return vocab


def _wordpiece_vocab() -> list[str]:
    """Specials, ASCII, Latin-1 and Latin Extended-A letters (whole and ``##`` forms), CJK ideographs."""
    latin = [chr(c) for c in range(0x21, 0x7F)] + [chr(c) for c in range(0xA1, 0x180) if chr(c).isprintable()]
    cjk = [chr(c) for c in range(0x4E00, 0x9FB0)]
    return _SPECIALS + latin + ["##" + c for c in latin] + cjk


def _full_wordpiece_vocab() -> list[str]:
    """A vocabulary shaped like distilbert-base-multilingual-cased's: 119,547 entries, mostly whole words.

    Why: the text model's cost grows with the tokens of a query (about 1 ms per token for
    the full-size model on a 2-core CPU), and the real student's WordPiece vocabulary keeps
    common words whole, where a vocabulary of letters alone spells every word out and
    doubles the tokens. Its entries: the tiny vocabulary, then every character of the word
    lists below with its upper case, whole and as a ``##`` continuation, then words from
    ``wordfreq``'s frequency lists for its 40-odd languages, taken by rank in turn (each
    language's first word, then each one's second...) until the size is reached. Only words
    the tokenizer's basic split keeps whole are taken. Words past the cut split into
    characters, where real WordPiece has longer pieces: the token counts this gives are, if
    anything, higher than the real model's.
    """
    try:
        import wordfreq
    except ImportError:
        raise ImportError(
            "the full-size benchmark text model needs wordfreq: pip install -e '.[bench]' (make install includes it)"
        ) from None
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer

    normalizer = BertNormalizer(handle_chinese_chars=True, strip_accents=False, lowercase=False)
    pre_tokenizer = BertPreTokenizer()

    def kept_whole(word: str) -> bool:
        return [piece for piece, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(word))] == [word]

    lists = [wordfreq.top_n_list(lang, FULL_VOCAB_SIZE) for lang in sorted(wordfreq.available_languages())]
    vocab = _wordpiece_vocab()
    seen = set(vocab)
    chars = sorted({c for words in lists for word in words for c in word + word.upper()} - seen)
    for token in chars + ["##" + c for c in chars]:
        if token not in seen:
            seen.add(token)
            vocab.append(token)
    for rank in range(max(map(len, lists))):
        for words in lists:
            if len(vocab) == FULL_VOCAB_SIZE:
                return vocab
            if rank < len(words) and words[rank] not in seen and kept_whole(words[rank]):
                seen.add(words[rank])
                vocab.append(words[rank])
    return vocab


def _write_clip(target: Path, full_size: bool, dim: int) -> None:
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    tokenizer = CLIPTokenizer(vocab=_clip_vocab(), merges=[], model_max_length=77)
    text_ids = {"bos_token_id": 512, "eos_token_id": 513, "pad_token_id": 513}
    if full_size:
        config = CLIPConfig(text_config={"vocab_size": 514, **text_ids}, projection_dim=dim)
    else:
        small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
        config = CLIPConfig(
            text_config={"vocab_size": 514, "max_position_embeddings": 77, **small, **text_ids},
            vision_config={"image_size": 224, "patch_size": 32, **small},
            projection_dim=dim,
        )
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    model.save_pretrained(target)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer)
    processor.save_pretrained(target)
    (target / "modules.json").write_text(
        json.dumps([{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.CLIPModel"}]),
        encoding="utf-8",
    )


def _write_text(target: Path, full_size: bool, dim: int) -> None:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Dense, Pooling
    from transformers import DistilBertConfig, DistilBertModel, DistilBertTokenizer

    vocab = _full_wordpiece_vocab() if full_size else _wordpiece_vocab()
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = Path(tmp)
        tokenizer = DistilBertTokenizer(
            vocab={token: i for i, token in enumerate(vocab)},
            do_lower_case=False,
            tokenize_chinese_chars=True,
            model_max_length=128,
        )
        if full_size:
            config = DistilBertConfig(vocab_size=len(vocab))
        else:
            config = DistilBertConfig(
                vocab_size=len(vocab), dim=32, hidden_dim=64, n_layers=2, n_heads=2, max_position_embeddings=128
            )
        torch.manual_seed(1)
        DistilBertModel(config).eval().save_pretrained(hf_dir)
        tokenizer.save_pretrained(hf_dir)
        transformer = Transformer(str(hf_dir), max_seq_length=128)
        pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
        dense = Dense(transformer.get_embedding_dimension(), dim, bias=False, activation_function=torch.nn.Identity())
        SentenceTransformer(modules=[transformer, pooling, dense], device="cpu").save(str(target))


def write_tiny_models(models_dir: Path, *, full_size: bool = False, dim: int = DIM) -> tuple[Path, Path]:
    """Write ``models_dir/clip`` and ``models_dir/text`` and return their paths.

    Each folder is written under a temporary name and renamed into place, so an
    interrupted call never leaves a half-written model that a later load would trust.
    ``full_size`` makes the CLIP towers the real ViT-B/32 architecture and the text model a
    DistilBERT-base student like clip-ViT-B-32-multilingual-v1 (random weights, for timing).
    ``dim`` is the size of both models' vectors (512 like ViT-B/32, 768 like ViT-L/14).
    """
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, writer in (("clip", _write_clip), ("text", _write_text)):
        final = models_dir / name
        with Staged(final, folder=True) as partial:
            writer(partial, full_size, dim)
        paths.append(final)
    return paths[0], paths[1]
