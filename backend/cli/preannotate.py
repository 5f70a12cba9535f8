"""``isnet preannotate``: predict the tasks already in a Label Studio project and write the predictions.

Why a command as well as the webhook: projects imported before the backend was connected, a
crash, or a new model version leave tasks without a prediction of the current version.
``--missing`` (the default) finishes exactly those, so re-running is always safe; ``--all``
writes a new prediction for every task even where one of this version exists. By default the
work runs here with a progress bar; ``--enqueue`` hands it to the RQ workers instead.
"""

from __future__ import annotations

import argparse
import sys

from backend.settings import load


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("preannotate", help="pre-annotate the tasks of a Label Studio project",
                            description=__doc__)
    parser.add_argument("--project", type=int, required=True, help="Label Studio project id")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--missing", action="store_true",
                       help="only tasks without a prediction of the model version (default)")
    which.add_argument("--all", action="store_true", help="every task, even those already predicted")
    parser.add_argument("--model-version", default="",
                        help="registry version to predict with and write under (default: the project's current one)")
    parser.add_argument("--enqueue", action="store_true", help="queue RQ jobs (REDIS_URL) instead of running here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from backend.jobs.connection import QueueUnavailable
    from backend.jobs.preannotate import ChunkOutcome, preannotate_tasks
    from backend.jobs.queue import chunks, submit
    from backend.labelstudio.client import LabelStudioClient, LabelStudioDown, TaskRejected
    from backend.labelstudio.fetch import ImageFetcher
    from backend.learning.lineages import lineage_for
    from backend.pipeline import TaskPipeline
    from backend.service.inference import DirectInference, VersionWatcher

    settings = load()
    client = LabelStudioClient.from_settings(settings)
    try:
        task_ids = client.project_task_ids(args.project)
    except (TaskRejected, LabelStudioDown) as exc:
        print(f"cannot list the tasks of project {args.project}: {exc}", file=sys.stderr)
        return 1
    if args.enqueue:
        if not settings.redis_url:
            print("--enqueue needs REDIS_URL", file=sys.stderr)
            return 2
        version = args.model_version or VersionWatcher(settings).current(lineage_for(args.project, settings)).name
        try:
            jobs = submit(args.project, task_ids, version, settings)
        except QueueUnavailable as exc:
            print(str(exc), file=sys.stderr)
            return 1
        print(f"{len(task_ids)} task(s) in {len(jobs)} new job(s) on queue {settings.queue_name}")
        return 0
    inference = DirectInference(settings, args.model_version or None).for_lineage(lineage_for(args.project, settings))
    pipeline = TaskPipeline(settings, inference, ImageFetcher(settings, client.auth))
    totals = {"done": 0, "skipped": 0, "failed": 0}
    with tqdm(total=len(task_ids), unit="task", desc=f"project {args.project}") as bar:
        def report(name: str, _: ChunkOutcome) -> None:
            totals[name] += 1
            bar.update(1)
            bar.set_postfix(totals, refresh=False)

        try:
            for part in chunks(task_ids, settings.preannotate_batch):
                preannotate_tasks(args.project, part, client=client, pipeline=pipeline, settings=settings,
                                  report=report, force=args.all)
        except LabelStudioDown as exc:
            print(f"Label Studio is unreachable, stopped (re-run to finish): {exc}", file=sys.stderr)
            return 1
    print(f"model version {pipeline.model_version}: {totals['done']} written, {totals['skipped']} already "
          f"predicted, {totals['failed']} failed")
    return 1 if totals["failed"] else 0
