"""Loading sentence-transformers models once per process, and a content hash of the image tower.

Both the layout sentence-transformers writes today (the CLIP files at the folder's top)
and the hub's 2021 one (``0_CLIPModel/`` named by ``modules.json``, weights in
``pytorch_model.bin``) load through sentence-transformers itself.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from resources.errors import ImageSearchError

MODELS: dict[tuple[str, str], object] = {}
MODELS_LOCK = threading.Lock()


def load_model(name: str, variable: str, device: str):
    """Load a sentence-transformers model once per process: a local folder, the HF cache, or the hub."""
    key = (name, device)
    with MODELS_LOCK:
        if key in MODELS:
            return MODELS[key]
        from sentence_transformers import SentenceTransformer

        hint = (
            f"cannot load {variable}={name!r}: it is neither a local model folder nor reachable on the "
            f"Hugging Face hub; download it once where there is internet and set {variable} to its local path"
        )
        local = Path(name).expanduser()
        try:
            if local.exists():
                model = SentenceTransformer(str(local), device=device)
            else:
                try:
                    model = SentenceTransformer(name, device=device, local_files_only=True)
                except OSError:
                    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
                        raise ImageSearchError(hint + " (HF_HUB_OFFLINE is set)") from None
                    model = SentenceTransformer(name, device=device)
        except ImageSearchError:
            raise
        except (OSError, ValueError) as exc:
            raise ImageSearchError(f"{hint} ({type(exc).__name__})") from None
        model.eval()
        MODELS[key] = model
        return model


def content_hash(clip, extra: str = "") -> str:
    """A SHA-256 of every weight of the image tower (vision model and projection), its config and ``extra``.

    Any changed weight changes it, wherever the model was loaded from, so a runtime built
    from the model is rebuilt when the model changes. About a second for ViT-B/32.
    """
    config = f"{extra}|{clip.config.vision_config.to_json_string()}|{clip.config.projection_dim}"
    digest = hashlib.sha256(config.encode())
    for part in (clip.vision_model, clip.visual_projection):
        for name, tensor in part.state_dict().items():
            digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
            digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:24]
