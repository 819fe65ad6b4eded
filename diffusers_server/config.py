"""Server configuration: the CLI flags, nothing read from the environment."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServerConfig:
    """Folders use A1111's flag names; unset ones default to sub-folders of ``models_dir``."""

    models_dir: Path
    host: str = "127.0.0.1"
    port: int = 3000
    ckpt_dir: Path | None = None
    lora_dir: Path | None = None
    embeddings_dir: Path | None = None
    vae_dir: Path | None = None
    ckpt: str | None = None
    clip_tokenizer: Path | None = None
    hash_cache: Path | None = None
    threads: int | None = None
    force_cpu: bool = False
    #: how long a txt2img waits for the requests ahead of it before a 503 (A1111 waits for ever)
    queue_timeout_s: float = 3600.0

    @property
    def checkpoints(self) -> Path:
        return self.ckpt_dir or self.models_dir / "checkpoints"

    @property
    def loras(self) -> Path:
        return self.lora_dir or self.models_dir / "loras"

    @property
    def embeddings(self) -> Path:
        return self.embeddings_dir or self.models_dir / "embeddings"

    @property
    def vaes(self) -> Path:
        return self.vae_dir or self.models_dir / "vae"
