from django.apps import AppConfig


class RunsConfig(AppConfig):
    name = "runs"
    verbose_name = "Runs"

    def ready(self) -> None:
        # The reaper starts with each django-q2 worker process (see runs.reaper).
        from runs import reaper

        reaper.connect()
