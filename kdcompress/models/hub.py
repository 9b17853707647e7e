"""timm's pretrained weights, found in the local Hugging Face cache first, with errors a user can act on.

timm resolves a pretrained name (``resnet18.a1_in1k``, ``hf-hub:org/repo``) to a Hub repository and
downloads its ``model.safetensors`` through ``huggingface_hub``. Two things make that unpleasant on a
machine without network: an uncached file is retried for most of a minute before failing, and the
failure names ``pytorch_model.bin`` rather than the model. So before asking timm to load, this module
looks the repository up in the local cache (no network): when it is there, timm loads it with
huggingface_hub held in offline mode (instant, nothing is contacted); when it is not and
``HF_HUB_OFFLINE`` is set, the user gets one sentence saying how to get it; otherwise timm downloads as
usual and a failure becomes that same sentence.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import timm
from timm.models import get_pretrained_cfg, parse_model_name, split_model_name_tag
from torch import nn

from kdcompress.errors import UserError, did_you_mean

#: Weight files a timm Hub repository may hold, in the order timm tries them.
HUB_FILES = ("model.safetensors", "pytorch_model.bin")
#: Name prefixes that name weights rather than an architecture.
WEIGHT_SOURCES = ("hf-hub", "local-dir")


def names_weights(name: str) -> bool:
    """Whether ``name`` names pretrained weights (a pretrained tag, ``hf-hub:`` or ``local-dir:``)."""
    source, model_name = parse_model_name(name)
    return source in WEIGHT_SOURCES or bool(split_model_name_tag(model_name)[1])


@dataclass(frozen=True)
class HubWeights:
    """Where timm's pretrained weights for a name live: the Hub repository and the local cache."""

    name: str  # as the user gave it
    repo_id: str | None  # None: weights from a URL or a local folder (not the Hub)
    revision: str | None
    cached_file: str | None  # the weight file in the local cache, when there

    @property
    def cache_folder(self) -> str | None:
        if self.repo_id is None:
            return None
        from huggingface_hub import constants
        from huggingface_hub.file_download import repo_folder_name

        return os.path.join(constants.HF_HUB_CACHE, repo_folder_name(repo_id=self.repo_id, repo_type="model"))

    def how_to_get(self) -> str:
        """One clause saying how to make these weights available offline."""
        if self.repo_id is None:
            return "download them where there is network (timm caches them under $TORCH_HOME/hub)"
        return (
            f"run `hf download {self.repo_id}` on a machine with network and copy {self.cache_folder} "
            "here, or download its model.safetensors and pass the file instead (--init FILE / "
            "--teacher-weights FILE)"
        )


def _cached(repo_id: str, revision: str | None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    for filename in HUB_FILES:
        found = try_to_load_from_cache(repo_id, filename, revision=revision)
        if isinstance(found, str):
            return found
    return None


def hub_weights(name: str) -> HubWeights:
    """Resolve ``name`` to its Hub repository (no network) and say whether its weights are cached.

    Raises a UserError for an unknown architecture, an invalid pretrained tag, or an architecture timm
    has no pretrained weights for (the ``cifar_*`` zoo: its published weights are local files).
    """
    source, model_name = parse_model_name(name)
    if source == "local-dir":
        return HubWeights(name, None, None, model_name)
    if source == "hf-hub":
        repo_id, _, revision = model_name.partition("@")
        return HubWeights(name, repo_id, revision or None, _cached(repo_id, revision or None))
    arch, tag = split_model_name_tag(model_name)
    if not timm.is_model(arch):
        hint = did_you_mean(arch, timm.list_models())
        raise UserError(f"Unknown architecture '{arch}'; `timm.list_models()` lists the valid names.{hint}")
    try:
        cfg = get_pretrained_cfg(model_name)
    except RuntimeError:
        tags = ", ".join(timm.list_pretrained(f"{arch}.*")[:8]) or "none"
        raise UserError(f"'{tag}' is not a pretrained tag of {arch}; timm has: {tags}.") from None
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise UserError(
            f"timm has no pretrained weights for '{arch}'; pass a weight file instead (--init FILE, "
            "--teacher-weights FILE)."
        )
    if not cfg.hf_hub_id:
        return HubWeights(name, None, None, None)
    filename = cfg.hf_hub_filename
    cached = None
    if filename:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(cfg.hf_hub_id, filename)
        cached = found if isinstance(found, str) else None
    return HubWeights(name, cfg.hf_hub_id, None, cached or _cached(cfg.hf_hub_id, None))


@contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Hold huggingface_hub in offline mode (it reads HF_HUB_OFFLINE once, at import)."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = before or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def create_pretrained(name: str, role: str, **kwargs: Any) -> tuple[nn.Module, HubWeights]:
    """``timm.create_model(name, pretrained=True, **kwargs)``: timm loads the weights and adapts the
    head (``num_classes``) and first conv (``in_chans``) when they differ. Cached weights load without
    touching the network; missing ones are one sentence saying how to get them."""
    weights = hub_weights(name)
    from huggingface_hub import constants

    if weights.repo_id is not None and weights.cached_file is None and constants.HF_HUB_OFFLINE:
        raise UserError(
            f"The pretrained {role} weights '{name}' are not in the local Hugging Face cache and "
            f"HF_HUB_OFFLINE is set; {weights.how_to_get()}."
        )
    try:
        with _hub_offline(weights.cached_file is not None):
            model = timm.create_model(name, pretrained=True, **kwargs)
    except (OSError, ValueError) as exc:  # FileNotFoundError, LocalEntryNotFoundError, HTTP/URL errors
        raise UserError(
            f"The pretrained {role} weights '{name}' could not be loaded ({type(exc).__name__}); "
            f"{weights.how_to_get()}."
        ) from None
    except RuntimeError as exc:  # timm's state-dict size mismatches: the repo's config does not fit
        raise UserError(
            f"The pretrained {role} weights '{name}' do not fit the model timm builds for them ({exc})."
        ) from None
    return model, weights
