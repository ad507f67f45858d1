"""The tiny models load through the real ``SentenceTransformer(path)`` code path and share one space."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image
from sentence_transformers import SentenceTransformer

from image_search.tiny_models import DIM


def test_clip_folder_is_laid_out_like_the_hub_model(tiny_models):
    clip_dir, _ = tiny_models
    modules = json.loads((clip_dir / "modules.json").read_text())
    assert modules == [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.CLIPModel"}]
    assert (clip_dir / "processor_config.json").is_file() and (clip_dir / "tokenizer.json").is_file()
    assert json.loads((clip_dir / "config.json").read_text())["projection_dim"] == DIM


def test_clip_encodes_images_and_texts_to_the_same_dimension(tiny_models):
    model = SentenceTransformer(str(tiny_models[0]), device="cpu")
    red, blue = Image.new("RGB", (640, 427), (220, 20, 20)), Image.new("RGB", (300, 500), (20, 20, 220))
    images = model.encode([red, blue])
    texts = model.encode(["a red square", "un carré bleu"])
    assert images.shape == (2, DIM) and texts.shape == (2, DIM)
    assert np.isfinite(images).all() and not np.allclose(images[0], images[1])


def test_text_student_tokenises_chinese_and_spanish_without_unknowns(tiny_models):
    model = SentenceTransformer(str(tiny_models[1]), device="cpu")
    tokenizer = model.tokenizer
    for query in ("一只狗在海滩上", "un perro en la playa, ¿sí? ñandú", "a dog on the beach"):
        tokens = tokenizer.tokenize(query)
        assert tokens and tokenizer.unk_token not in tokens, (query, tokens)
    vectors = model.encode(["一只狗在海滩上", "un perro en la playa"])
    assert vectors.shape == (2, DIM) and not np.allclose(vectors[0], vectors[1])


def test_rewriting_replaces_the_models_in_place(tmp_path):
    from image_search.tiny_models import write_tiny_models

    first = write_tiny_models(tmp_path)
    second = write_tiny_models(tmp_path)
    assert first == second
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip", "text"]


def test_full_size_vocabulary_keeps_common_words_whole_like_the_real_student():
    """The benchmark model must tokenize like clip-ViT-B-32-multilingual-v1: a query's cost follows its tokens."""
    from transformers import DistilBertTokenizer

    from image_search.tiny_models import FULL_VOCAB_SIZE, _full_wordpiece_vocab

    vocab = _full_wordpiece_vocab()
    assert len(vocab) == len(set(vocab)) == FULL_VOCAB_SIZE
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = DistilBertTokenizer(
        vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=False, tokenize_chinese_chars=True
    )
    assert tokenizer.tokenize("a dog on the beach") == ["a", "dog", "on", "the", "beach"]
    assert tokenizer.tokenize("chien sur la plage") == ["chien", "sur", "la", "plage"]
    assert tokenizer.tokenize("城市夜景") == ["城", "市", "夜", "景"]
    for query in ("Кошка спит на диване", "قارب في البحر", "Ñandú xyzzyq", "海辺の犬"):
        tokens = tokenizer.tokenize(query)
        assert tokens and tokenizer.unk_token not in tokens, (query, tokens)
    assert tokenizer.tokenize("xyzzyq") == ["x", "##y", "##z", "##z", "##y", "##q"]


def test_full_size_vocabulary_without_wordfreq_says_what_to_install(monkeypatch):
    from image_search.tiny_models import _full_wordpiece_vocab

    monkeypatch.setitem(sys.modules, "wordfreq", None)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[bench\]'"):
        _full_wordpiece_vocab()
