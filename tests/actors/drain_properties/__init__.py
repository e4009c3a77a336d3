"""Property tests: a drain loses nothing.

Hypothesis state machines, each next to a model of what must hold:

* :class:`DrainMachine` runs the real actors: a :class:`SupervisorActor` with builtin
  ``WorkCore`` subsystems and external subsystems that register over a recording
  ``SubsystemLink`` (the test plays the process: it answers ``intake_paused``, ``drained``
  and ``cancel_result`` straight to the actor the link was routed to, as ``daemon/server.py`` does). Rules
  enable (with or without a deadline), disable, start and finish work (a paused subsystem
  must refuse), cancel, register (with or without work) and disconnect externals, crash
  and restart builtins (also with a cancel queued behind the crash), and fire the
  deadline. After every step it waits until every actor is quiescent (asks, never sleeps)
  and checks: no new work after a pause; safe_to_restart exactly when every subsystem is
  paused for this drain with nothing blocking and none failed or unknown (from the model,
  against the status and each subsystem's state); disable resumes everybody; the state is
  normal/draining/drained and enabled == (state != normal); history and audit record
  every enable and disable with who; every accepted cancel is answered.
* :class:`JobServerMachine` runs the job server's plain cores (``SchedulerCore`` and
  ``AgentsCore``) on a real ``Store(":memory:")``. Messages between them go through an
  inbox per core that the rules deliver, so the rules choose the interleaving. Rules
  trigger, pause, resume, deliver, finish jobs, cancel items and runs, drain to the end and
  restart the daemon (``Store.recover``). It checks that no job starts while the agents are
  paused, none starts twice, nothing is lost at quiescence (a scheduled job is queued, a
  building job runs on an agent), a drain ends once the building jobs exit, and every job
  ends in a recorded terminal state once all work is done.
* :class:`JobServerCancelRunRaceMachine` and :class:`JobServerCoreFailureMachine` add a
  cancel-run at any moment, and failing cores (pykka drops a failed actor's inbox) and a
  killed daemon. The defects they found are fixed; the ``test_regression_*`` tests in
  ``test_jobserver_regressions.py`` are their shrunk examples, written out
  (``tests/actors/test_jobserver_restarts.py`` runs the failure cases again through real actors).

One file for each: ``drain_model.py`` and ``test_drain_machine.py`` (the first);
``jobserver_model.py``, ``jobserver_machine.py`` and ``test_jobserver_machines.py`` (the
others). ``runs.py`` holds their settings, and ``COUNTS`` and ``RULES``, which count
examples, steps and rules; ``conftest.py`` prints them once the package's tests have run
(``pytest tests/actors/drain_properties -s``).
"""
