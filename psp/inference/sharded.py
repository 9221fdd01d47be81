"""Running one shard of a many-process inversion and, on the last one, reporting the whole run.

The coordination (which jobs, the manifest parts, markers, heartbeats, merging) is in
``psp.inference.shards``; this module strings it around :class:`~psp.inference.invert.Inversion`.
Exit codes: 0 every input of the shard (or, for the process that reports the whole run, of the
run) succeeded; 1 some failed; 3 the run is incomplete: some inputs were not processed because a
rank stopped early (the message names them; rerun the same command with ``--resume``).
"""
from __future__ import annotations

import sys

from psp.inference.invert import Inversion
from psp.inference.jobs import Job
from psp.inference.outputs import Manifest
from psp.inference.shards import (Heartbeat, Shard, ShardFiles, history, latest_status,
                                  merge_lock, merge_parts, remove_coordination_files, wait_for_shards)

INCOMPLETE = 3
SHOWN_MISSING = 5  # missing inputs named in the message; the count says how many in all


def run_shard(run: Inversion, jobs: list[Job], shard: Shard, done: set[str], fingerprint: str) -> int:
    """Invert ``shard``'s share of ``jobs`` (the full, ordered job list, whose
    :func:`~psp.inference.shards.jobs_fingerprint` is ``fingerprint``) into ``run.out``, skipping
    ``done`` (:func:`~psp.inference.jobs.finished_outputs` of this shard); the exit code.

    A waiting rank 0 gives up on a rank whose heartbeat has not changed for ``infer.shard_timeout`` s.
    """
    files, timeout = ShardFiles(run.out, shard), run.cfg.shard_timeout
    files.clear_done()
    run.manifest_name = files.part_name
    run.header_extra = {"shard": {"index": shard.index, "count": shard.count, "inputs_total": len(jobs),
                                  "jobs_sha256": fingerprint}}
    heartbeat = Heartbeat(files.path(shard.index, ".alive"), interval=min(max(timeout / 5, 0.1), 10.0)).start()
    try:
        summary = run.run(shard.select(jobs, run.shard_group()), done)
    finally:
        heartbeat.stop()
    files.write_done(fingerprint, {"ok": summary.ok, "failed": summary.failed, "skipped": summary.skipped})
    print(f"shard {shard.index}/{shard.count}: {summary.line('inverted')}", file=sys.stderr)
    merge_parts(run.out)
    own_status = 0 if summary.failed == 0 else 1
    if shard.waits_for_others:
        markers, stopped = wait_for_shards(files, fingerprint, timeout)
        merge_parts(run.out)
    elif not shard.array:
        return own_status  # rank 0 of the launch reports the whole run
    else:
        markers, stopped = files.finished_shards(fingerprint), []
        if len(markers) < shard.count:
            waiting = [i for i in range(shard.count) if i not in markers]
            print(f"shard {shard.index}/{shard.count} done; not finished yet: shard(s) "
                  f"{_ranges(waiting)} (the last to finish merges {Manifest.NAME})", file=sys.stderr)
            return own_status
    return _report_run(run, jobs, shard, stopped)


def _report_run(run: Inversion, jobs: list[Job], shard: Shard, stopped: list[int]) -> int:
    """After every shard finished or stopped: say what the whole run produced; the exit code."""
    with merge_lock(run.out, exclusive=False):
        status = latest_status(history(run.out))
    outcome = [status.get(run.output_paths(job)[0]) for job in jobs]
    missing = [job for job, s in zip(jobs, outcome) if s not in ("ok", "skipped", "failed")]
    failed = outcome.count("failed")
    if missing:
        names = ", ".join(str(job.source) for job in missing[:SHOWN_MISSING])
        more = f" and {len(missing) - SHOWN_MISSING} more" if len(missing) > SHOWN_MISSING else ""
        why = f"shard(s) {_ranges(stopped)} of {shard.count} stopped before finishing" if stopped else \
            "some shards did not finish"
        print(f"error: {len(missing)} of {len(jobs)} inputs missing ({why}): {names}{more}; "
              f"finished outputs are kept in {run.out / Manifest.NAME}; rerun the same command with --resume "
              "(any number of ranks) to finish them", file=sys.stderr)
        return INCOMPLETE
    remove_coordination_files(run.out)
    print(f"all {shard.count} shards done: {len(jobs) - failed} of {len(jobs)} inputs inverted, {failed} failed; "
          f"manifest: {run.out / Manifest.NAME}", file=sys.stderr)
    return 0 if failed == 0 else 1


def _ranges(indices: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``0-2,5``."""
    spans: list[list[int]] = []
    for i in sorted(indices):
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
