from django.apps import AppConfig


class RunsConfig(AppConfig):
    name = "runs"
    verbose_name = "Runs"

    def ready(self) -> None:
        # The reaper starts with each django-q2 worker process (see runs.reaper).
        from runs import queues, reaper

        reaper.connect()
        # A worker killed while idle must not stop the cluster (see runs.queues).
        queues.install()
