"""MODEL_ZOO.md, rendered from the catalog (``python -m adet.model_zoo --write``)."""
from typing import Dict, Iterable, List
from urllib.parse import urlsplit

from .catalog import CATALOG, SOURCES, ModelInfo
from .model_zoo import has_config

__all__ = ["render_markdown"]

_HOSTS = {
    "huggingface.co": "HuggingFace", "drive.google.com": "Google Drive", "pan.baidu.com": "Baidu Pan",
    "dl.dropbox.com": "Dropbox", "www.dropbox.com": "Dropbox", "cloudstor.aarnet.edu.au": "CloudStor",
}
_METRICS = (("box_ap", "box AP"), ("mask_ap", "mask AP"), ("pq", "PQ"))

_HEADER = """\
# Model zoo

<!-- Generated from adet/model_zoo/catalog.py by `python -m adet.model_zoo --write`:
     edit the catalog, then regenerate (tests/test_model_zoo.py checks they agree). -->

The models published by AdelaiDet and SparseInst, with the config in this repository that
builds each one, the download links as published, and the accuracy as published (COCO
val2017 unless a note says otherwise). Sources: {sources}.

```python
from adet import model_zoo
model = model_zoo.get("CondInst_MS_R_50_1x")      # built from adet's config, weights downloaded once
cfg_file = model_zoo.get_config_file("CondInst_MS_R_50_1x")
url = model_zoo.get_checkpoint_url("CondInst_MS_R_50_1x")
```

Weights go to `$ADET_CACHE` (default `~/.cache/adet/checkpoints`); any of these URLs also
works as `MODEL.WEIGHTS` for `tools/train_net.py` and `demo/demo.py`. Google Drive share
pages cannot be downloaded directly: fetch the file in a browser (or with `gdown`) and
give its local path (`model_zoo.get(name, weights=PATH)` or `MODEL.WEIGHTS PATH`).
No sha256 was published for these files; where the catalog holds one, downloads are
checked against it. A config marked "not in adet" needs a backbone this repository does
not implement yet; its model is listed for completeness.
"""


def _link(url: str) -> str:
    label = _HOSTS.get(urlsplit(url).netloc, urlsplit(url).netloc)
    return f"[{label}{' (page)' if '/blob/' in url else ''}]({url})"


def _config_cell(m: ModelInfo) -> str:
    if not has_config(m.name):
        return f"`{m.config}`: not in adet" + (f" (needs the {m.requires})" if m.requires else "")
    return f"[{m.config}](configs/{m.config})"


def _notes_cell(m: ModelInfo) -> str:
    notes = [f"on {m.dataset}"] if m.dataset != "COCO val2017" else []
    notes += [m.note] if m.note else []
    notes += [f"sha256 `{m.sha256}`"] if m.sha256 else []
    return "; ".join(notes)


def _row(m: ModelInfo, metrics: List[str]) -> str:
    values = ["" if getattr(m, k) is None else f"{getattr(m, k):.1f}" for k in metrics]
    links = [_link(u) for u in m.urls] + [f"dead: {_link(u)}" for u in m.dead_urls]
    cells = [f"`{m.name}`", _config_cell(m), *values, " ".join(links), f"{m.toolbox} {m.source}", _notes_cell(m)]
    return "| " + " | ".join(cells) + " |"


def _table(models: List[ModelInfo]) -> List[str]:
    metrics = [k for k, _ in _METRICS if any(getattr(m, k) is not None for m in models)]
    titles = [t for k, t in _METRICS if k in metrics]
    head = ["name", "config", *titles, "download", "AP source", "notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + [_row(m, metrics) for m in models]


def _by_method(models: Iterable[ModelInfo]) -> Dict[str, List[ModelInfo]]:
    groups: Dict[str, List[ModelInfo]] = {}
    for m in models:
        groups.setdefault(m.method, []).append(m)
    return groups


def render_markdown(catalog: Dict[str, ModelInfo] = CATALOG) -> str:
    """The text of MODEL_ZOO.md for ``catalog``."""
    sources = ", ".join(f"{k}: {v}" for k, v in SOURCES.items())
    lines = [_HEADER.format(sources=sources)]
    for method, models in _by_method(catalog.values()).items():
        lines += [f"## {method}", ""] + _table(models) + [""]
    return "\n".join(lines)
