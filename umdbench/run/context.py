""":class:`RunContext`: what every builder of a stage needs, the
:class:`~umdbench.run.workspace.Workspace`, the plugin registries and the dataset catalog (plugin
instances, built once per process)."""

from __future__ import annotations

from dataclasses import dataclass, field

from umdbench.api import Encoder
from umdbench.data.catalog import DataCatalog
from umdbench.plan.codekey import modules_digest
from umdbench.plugin.registry import Registries
from umdbench.run.console import PluginLogs
from umdbench.run.workspace import Workspace
from umdbench.util import config_hash

__all__ = ["RunContext"]


@dataclass
class RunContext:
    """The work dir, the registries and the dataset catalog of one process."""

    ws: Workspace
    registries: Registries
    catalog: DataCatalog | None = None
    _tokenizers: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.ws, Workspace):
            self.ws = Workspace(self.ws)
        self.catalog = self.catalog or DataCatalog(
            self.registries, cache_file=self.ws.planning_cache_path, code_digest=modules_digest
        )
        PluginLogs.route(self.registries)  # before any plugin code runs in this context

    def encoder_class(self, model_cfg: dict) -> type[Encoder]:
        return self.registries.encoder.get(model_cfg["type"])

    def tokenizer(self, model_cfg: dict):
        """The encoder's tokenizer (None for an encoder without text), built once per config."""
        key = config_hash(model_cfg)
        if key not in self._tokenizers:
            self._tokenizers[key] = self.encoder_class(model_cfg).build_tokenizer(model_cfg)
        return self._tokenizers[key]
