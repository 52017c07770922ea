"""Every write to runbooks: create, update (a new version), archive, sync from files."""

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from config.errors import Conflict, ValidationFailed
from runbooks.models import Runbook, RunbookVersion
from runbooks.schema import (
    DefinitionError,
    GroupStep,
    RunbookDefinition,
    load_definition_text,
    parse_definition,
)


def _validation_failed(error: DefinitionError) -> ValidationFailed:
    details: dict[str, list[str]] = {}
    for issue in error.errors:
        details.setdefault(issue.path or "definition", []).append(issue.message)
    return ValidationFailed("The runbook definition is not valid.", details=details)


def definition_parse(*, data: object = None, text: str | None = None) -> RunbookDefinition:
    """Parses a definition given as data or as YAML/JSON text; raises ValidationFailed."""
    try:
        if text is not None:
            return load_definition_text(text)
        return parse_definition(data)
    except DefinitionError as error:
        raise _validation_failed(error) from error


def _checksum(definition: RunbookDefinition) -> str:
    canonical = json.dumps(definition.canonical(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class SaveResult:
    runbook: Runbook
    version: RunbookVersion
    created: bool  # a new runbook
    changed: bool  # a new version was made


@transaction.atomic
def runbook_save(
    *,
    definition: RunbookDefinition,
    source: str = "",
    user: AbstractBaseUser | None,
    expected_slug: str | None = None,
) -> SaveResult:
    """Creates the runbook or adds a version, unless the definition did not change."""
    if expected_slug is not None and definition.slug != expected_slug:
        raise ValidationFailed(
            "The definition's slug does not match the runbook.",
            details={"slug": [f"must be {expected_slug!r}; a runbook's slug cannot change"]},
        )
    checksum = _checksum(definition)
    runbook = Runbook.objects.select_for_update().filter(slug=definition.slug).first()
    created = runbook is None
    if runbook is None:
        runbook = Runbook.objects.create(
            slug=definition.slug,
            name=definition.name,
            description=definition.description,
            labels=definition.labels,
        )
    else:
        latest = runbook.latest_version
        if latest is not None and latest.checksum == checksum and not runbook.is_archived:
            return SaveResult(runbook, latest, created=False, changed=False)
    number = (
        runbook.versions.order_by("-number").values_list("number", flat=True).first() or 0
    ) + 1
    version = RunbookVersion.objects.create(
        runbook=runbook,
        number=number,
        definition=definition.canonical(),
        source=source,
        checksum=checksum,
        created_by=user,
    )
    runbook.name = definition.name
    runbook.description = definition.description
    runbook.labels = definition.labels
    runbook.latest_version = version
    runbook.archived_at = None
    runbook.save()
    return SaveResult(runbook, version, created=created, changed=True)


def runbook_create(
    *, definition: RunbookDefinition, source: str = "", user: AbstractBaseUser | None
) -> SaveResult:
    """Creates a runbook, or revives an archived one with a new version; refuses a slug that
    an active runbook has (updating it is `runbook_save` with `expected_slug`)."""
    taken = ValidationFailed(
        "A runbook with this slug exists; PUT /runbooks/{slug} updates it.",
        details={"slug": [f"{definition.slug!r} is taken"]},
    )
    # The check and the save share a transaction, and a runbook that appeared in between
    # (another create of the same slug) rolls this one back instead of becoming version 2
    # of it; on PostgreSQL the losing insert may also fail on the unique slug.
    try:
        with transaction.atomic():
            existing = Runbook.objects.filter(slug=definition.slug).first()
            if existing is not None and not existing.is_archived:
                raise taken
            result = runbook_save(definition=definition, source=source, user=user)
            if existing is None and not result.created:
                raise taken
    except IntegrityError:
        raise taken from None
    return result


@transaction.atomic
def runbook_archive(*, runbook: Runbook, user: AbstractBaseUser | None) -> Runbook:
    """Hides a runbook from lists and refuses new runs; its runs keep their version."""
    if runbook.is_archived:
        raise Conflict(f"Runbook {runbook.slug!r} is already archived.")
    runbook.archived_at = timezone.now()
    runbook.save(update_fields=["archived_at", "updated_at"])
    return runbook


@lru_cache(maxsize=256)
def _definition_for_version(version_pk: int, checksum: str) -> RunbookDefinition:
    # The checksum is part of the key because SQLite may reuse the primary key of a version
    # whose transaction rolled back.
    definition = RunbookVersion.objects.values_list("definition", flat=True).get(pk=version_pk)
    return parse_definition(definition, stored=True)


def version_definition(version: RunbookVersion) -> RunbookDefinition:
    """The parsed definition of a version, cached: versions never change.

    Only `pk` and `checksum` are read, so callers may defer the heavy columns.
    """
    return _definition_for_version(version.pk, version.checksum)


@lru_cache(maxsize=256)
def _steps_for_version(version_pk: int, checksum: str) -> dict[str, Any]:
    definition = _definition_for_version(version_pk, checksum)
    return {spec.id: spec for _, spec, _, _ in definition.iter_steps()}


def version_steps(version: RunbookVersion) -> dict[str, Any]:
    """A version's step specs by id, cached like `version_definition`."""
    return _steps_for_version(version.pk, version.checksum)


@lru_cache(maxsize=256)
def _last_steps_for_version(version_pk: int, checksum: str) -> frozenset[str]:
    definition = _definition_for_version(version_pk, checksum)
    last = {definition.steps[-1].id}
    for _, spec, _, _ in definition.iter_steps():
        if isinstance(spec, GroupStep):
            last.add(spec.steps[-1].id)
    return frozenset(last)


def version_last_steps(version: RunbookVersion) -> frozenset[str]:
    """The ids of the steps no sibling follows (the last of the runbook and of each group),
    cached like `version_definition`."""
    return _last_steps_for_version(version.pk, version.checksum)
