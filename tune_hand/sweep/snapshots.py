"""Every experiment snapshot Ray takes while a sweep runs is signed (Ray part of `signing.py`).

    with signed_snapshots(signer):
        tuner.fit()
"""

from __future__ import annotations

import sys

from ..errors import TuneHandError
from .signing import Signer


class signed_snapshots:
    """Sign every experiment snapshot Ray takes while the sweep runs (`signing.py`).

    The hook is `TuneController.save_to_dir`, wrapped on the class for the length of the fit:
    it is the one function that writes a snapshot (experiment_state, searcher, callback state,
    and the trials' params.pkl/error.pkl beside them) into the driver's local staging
    directory, and Ray uploads that directory right after it returns
    (`_ExperimentCheckpointManager.sync_up_experiment_state`). The wrapper (1) waits for the
    previous upload, so no upload reads the staging directory while it changes; (2) lets Ray
    write the snapshot; (3) signs it and writes the manifest into the experiment, before
    Ray's upload of the snapshot starts. A SIGKILL at any moment thus leaves files of the
    last two snapshots, and the manifest in storage accepts both.

    Not a scheduler or a Callback: a scheduler reaches the controller only once a trial is
    added, a Callback never does, and neither runs after the snapshot is complete (callback
    state is pickled last, after every callback's get_state). The Ray names used are checked
    when the fit starts, and a snapshot that cannot be signed stops the sweep: never unsigned
    state in storage.
    """

    def __init__(self, signer: Signer):
        self.signer = signer
        self.failed: TuneHandError | None = None

    def __enter__(self):
        import ray

        try:
            from ray.tune.execution.tune_controller import TuneController

            self.original = TuneController.save_to_dir
            assert isinstance(TuneController.experiment_state_file_name, property)
        except (ImportError, AttributeError, AssertionError):
            raise TuneHandError(f"Ray {ray.__version__} has no TuneController.save_to_dir where tune-hand signs the "
                                "sweep's state; nothing was run (tune-hand needs Ray 2.60)") from None
        hook = self

        def save_to_dir(controller):
            hook.save(controller)

        self.cls = TuneController
        TuneController.save_to_dir = save_to_dir
        return self

    def save(self, controller) -> None:
        try:
            storage = controller._storage
            staging, syncer = storage.experiment_driver_staging_path, storage.syncer
            session = controller.experiment_state_file_name.removeprefix("experiment_state-").removesuffix(".json")
        except AttributeError as e:
            self.failed = TuneHandError(f"cannot sign the sweep's state: Ray's TuneController has no {e.name} here "
                                        "(tune-hand needs Ray 2.60); the sweep stops rather than leave it unsigned")
            raise self.failed from None
        try:
            syncer.wait()
        except Exception as e:  # noqa: BLE001 - Ray's own next upload would only log it too
            why = " ".join(str(e).split())[:200]
            print(f"tune-hand: warning: the last upload of the experiment state failed ({why})", file=sys.stderr)
        self.original(controller)
        try:
            self.signer.sign_snapshot(staging, session)
        except Exception as e:
            self.failed = e if isinstance(e, TuneHandError) else TuneHandError(
                f"cannot sign the sweep's state ({type(e).__name__}: {e}); the sweep stops rather than leave it "
                "unsigned")
            raise self.failed from None

    def __exit__(self, exc_type, *exc):
        self.cls.save_to_dir = self.original
        if self.failed is not None and (exc_type is None or not issubclass(exc_type, KeyboardInterrupt)):
            raise self.failed  # Ray logs (and swallows) a failure of its final snapshot
        return False
