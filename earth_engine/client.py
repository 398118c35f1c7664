"""Once-per-process initialisation of the ``ee`` client."""
from __future__ import annotations

import logging
import threading
from typing import Any, Optional, Tuple

from earth_engine.settings import ADC, ANONYMOUS, EESettings, credential_kind, credential_source

_LOG = logging.getLogger(__name__)
_SCOPES = ("https://www.googleapis.com/auth/earthengine", "https://www.googleapis.com/auth/cloud-platform")
_lock = threading.Lock()
_initialized_with: Optional[EESettings] = None


def _credentials(settings: EESettings) -> Tuple[Any, Optional[str]]:
    """(credentials, project) for the settings' credential source."""
    source = credential_source(settings.credentials)
    if source == ANONYMOUS:
        import google.auth.credentials

        return google.auth.credentials.AnonymousCredentials(), settings.project
    if source == ADC:
        import google.auth

        credentials, adc_project = google.auth.default(scopes=list(_SCOPES))
        return credentials, settings.project or adc_project
    from google.oauth2 import service_account

    try:
        credentials = service_account.Credentials.from_service_account_file(
            settings.credentials, scopes=list(_SCOPES))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read service-account key file {settings.credentials!r} "
                         f"(--ee-credentials takes 'adc', 'anonymous' or a key file path): {exc}") from exc
    return credentials, settings.project or credentials.project_id


def initialize(settings: EESettings) -> None:
    """Initialise ``ee`` for these settings; a no-op when this process already did so.

    The client's own retries are switched off (``setMaxRetries(0)``): our retry policy owns backoff,
    so it stays bounded, jittered and counted.
    """
    global _initialized_with
    with _lock:
        if _initialized_with == settings:
            return
        import ee

        credentials, project = _credentials(settings)
        _LOG.info("initialising Earth Engine: endpoint=%s project=%s credentials=%s",
                  settings.endpoint, project, credential_kind(settings.credentials))
        ee.Initialize(credentials=credentials, project=project, url=settings.endpoint)
        ee.data.setMaxRetries(0)
        ee.data.setDeadline(int(settings.deadline_s * 1000))
        _initialized_with = settings


def reset_for_tests() -> None:
    """Forget the initialisation so the next ``initialize`` runs again."""
    global _initialized_with
    with _lock:
        _initialized_with = None
