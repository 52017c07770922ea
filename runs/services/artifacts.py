"""Storing the files a step leaves behind."""

import hashlib
import os
from pathlib import Path

from django.core.files import File

from runs.models import Artifact, Step


def artifacts_store(*, step: Step, files: list[tuple[str, Path]]) -> list[Artifact]:
    """Copies the files a step left in $STEPWISE_ARTIFACTS into storage."""
    stored = []
    for name, path in files:
        try:
            # Never follow a link: the step's processes could swap a file for one after listing.
            handle = os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb")
        except OSError:
            continue
        with handle:
            digest = hashlib.file_digest(handle, "sha256")
            handle.seek(0)
            artifact = Artifact(
                run_id=step.run_id,
                step=step,
                attempt=step.attempt,
                name=name,
                size=path.stat().st_size,
                sha256=digest.hexdigest(),
            )
            artifact.run = step.run
            artifact.file.save(name, File(handle), save=False)
        artifact.save()
        stored.append(artifact)
    return stored
