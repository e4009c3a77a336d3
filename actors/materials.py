"""The material subsystem: polls git repositories; each running poll is a material update.

Paused, it starts no poll (config repositories included) and drains once the running
polls finish. A material update is never cancelled (a partial clone can corrupt the
repository); ``poll_timeout`` bounds it instead, so one hung remote cannot hold a drain.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from .definitions import MaterialDef, parse_duration
from .eta import RECENT
from .jobs import FilesFetched, PollFinished
from .ports import Clock, JobStore, PeerTable, ProcessPort, Timers
from .store import StoreError
from .subsystem import Emit, SubsystemCore
from .types import MATERIAL_UPDATE, InFlightItem, MaterialRef, qualify

log = logging.getLogger("maintd.materials")


class PollDue(msgspec.Struct, frozen=True):
    key: str


class MaterialChanged(msgspec.Struct, frozen=True, kw_only=True):
    """To the scheduler: ``material`` has a new ``revision``."""

    material: str
    revision: str


class ConfigRepoFiles(msgspec.Struct, frozen=True, kw_only=True):
    """To the config guard: the pipeline files of a config repository at ``revision``.

    ``restored``: not a change but the files it was given before (at start-up, or after the
    config guard or this actor restarted), merged even during maintenance.
    """

    repo: str
    revision: str
    files: dict[str, str]
    restored: bool = False


class ConfigRepoFilesWanted(msgspec.Struct, frozen=True):
    """From a (re)started config guard: send the files of every config repository again."""


class MaterialsCore(SubsystemCore):
    """``store`` records revisions and poll results; ``peers`` reaches the scheduler and config guard."""

    def __init__(
        self,
        name: str,
        emit: Emit,
        items: Iterable[InFlightItem] = (),
        *,
        materials: list[MaterialDef],
        config_repos: list[MaterialDef],
        processes: ProcessPort,
        timers: Timers,
        clock: Clock,
        store: JobStore,
        peers: PeerTable,
        on_poll: Callable[[str], None] | None = None,
        on_durations: Callable[[str, tuple[float, ...]], None] | None = None,
    ) -> None:
        # Polls that were running when an earlier actor failed are still running in the shell;
        # their answers come to this actor, so their items are kept.
        super().__init__(name, emit, items)
        self.defs: dict[str, tuple[MaterialDef, bool]] = {m.name: (m, False) for m in materials}
        self.defs.update({f"config:{m.name}": (m, True) for m in config_repos})
        self.processes = processes
        self.timers = timers
        self.clock = clock
        self.store = store
        self.peers = peers
        self.me = peers.ref(name)
        self.on_poll = on_poll or (lambda result: None)
        #: material name -> how long its recent material updates took (seconds, newest first),
        #: for the drain's ETA; in memory only: empty after a restart of the daemon or this actor
        self.durations: dict[str, collections.deque[float]] = {}
        #: told (material name, its recent durations) after each material update ends
        self.on_durations = on_durations or (lambda name, durations: None)
        #: config repo key -> the files last sent to the config guard (sent again when it asks)
        self.sent: dict[str, ConfigRepoFiles] = {}
        #: config repos whose files this actor has not sent yet: fetched on the next poll even if
        #: the revision is the one recorded (a restarted daemon or actor knows no files)
        self.unsent: set[str] = {key for key, (_, is_config_repo) in self.defs.items() if is_config_repo}

    def start(self) -> None:
        for key in self.defs:
            self.timers.arm(f"poll:{key}", 0, PollDue(key), self.me)

    def on_pause(self, drain_id: str) -> None:
        for key in self.defs:
            self.timers.disarm(f"poll:{key}")

    def on_resume(self, drain_id: str) -> None:
        self.start()

    def polling(self, key: str) -> bool:
        return qualify(self.name, key) in self.items

    def poll(self, key: str) -> None:
        if key not in self.defs:
            return
        material, is_config_repo = self.defs[key]
        if not self.intake_open:
            log.info("poll of %s skipped: maintenance mode", key)
            return
        if self.polling(key):
            return
        now = self.clock.now()
        self.add(
            InFlightItem(
                id=qualify(self.name, key),
                subsystem=self.name,
                kind=MATERIAL_UPDATE,
                description=f"{'config repo' if is_config_repo else 'material'} {material.name}: "
                f"{material.url} ({material.branch})",
                started_at=now,
                cancellable=False,
                timeout_at=now + parse_duration(material.poll_timeout),
                material=MaterialRef(name=material.name, url=material.url, branch=material.branch, config_repo=is_config_repo),
            )
        )
        self.processes.poll_material(self.me, key, material.url, material.branch, parse_duration(material.poll_timeout))

    def finished(self, result: PollFinished) -> None:
        key = result.key
        item_id = qualify(self.name, key)
        if key not in self.defs:
            self.remove(item_id)
            return
        material, is_config_repo = self.defs[key]
        outcome = "timeout" if result.timed_out else ("error" if result.error else "ok")
        self.on_poll(outcome)
        fetching = False
        if result.error or result.revision is None:
            log.warning("poll of %s failed: %s", key, "timed out" if result.timed_out else result.error)
        elif not self.intake_open:
            # Not recorded: the first poll after maintenance sees the revision as new and acts on it.
            log.info("poll of %s ended during maintenance; its revision is taken up after it", key)
        elif is_config_repo:
            if key in self.unsent or self.store.last_revision(key) != result.revision:
                # The fetch is part of this material update: the item stays until FilesFetched,
                # and the fetch's own poll_timeout is what ends it now.
                timeout = parse_duration(material.poll_timeout)
                if (item := self.items.get(item_id)) is not None:
                    self.add(msgspec.structs.replace(item, timeout_at=self.clock.now() + timeout))
                self.processes.fetch_files(self.me, key, material.url, result.revision, timeout)
                fetching = True
        elif self.record(key, result.revision):
            log.info("%s has a new revision %s", key, result.revision[:12])
            self.peers.tell("scheduler", MaterialChanged(material=key, revision=result.revision))
        if not fetching:
            self.ended(item_id, material.name)
            self.rearm(key)

    def fetched(self, msg: FilesFetched) -> None:
        key = msg.key
        if key in self.defs:
            self.ended(qualify(self.name, key), self.defs[key][0].name)
        else:
            self.remove(qualify(self.name, key))
        # An error with files means some files were skipped (too big, not UTF-8).
        if msg.error:
            log.warning("pipeline files of %s at %s: %s", key, msg.revision[:12], msg.error)
        if msg.files or not msg.error:
            new = self.record(key, msg.revision)
            files = ConfigRepoFiles(
                repo=key.removeprefix("config:"), revision=msg.revision, files=msg.files, restored=not new and key in self.unsent
            )
            self.unsent.discard(key)
            self.sent[key] = files
            self.peers.tell("config", files)
        self.rearm(key)

    def ended(self, item_id: str, material: str) -> None:
        """A material update ended: remove its item, and keep how long it took (this actor's clock)."""
        item = self.items.get(item_id)
        self.remove(item_id)
        if item is None:
            return
        recent = self.durations.setdefault(material, collections.deque(maxlen=RECENT))
        recent.appendleft(max(0.0, self.clock.now() - item.started_at))
        self.on_durations(material, tuple(recent))

    def record(self, key: str, revision: str) -> bool:
        """Record a polled revision; True if it is new. A store that refuses the write (a full
        disk) does not fail the subsystem: the revision counts as new now, and, not being
        recorded, it is new again at the next poll, so nothing is missed."""
        try:
            return bool(self.store.record_revision(key, revision, self.clock.now()))
        except StoreError as exc:
            log.warning("cannot record revision %s of %s (%s); it is taken up again at the next poll", revision[:12], key, exc)
            return True

    def send_again(self) -> None:
        """A (re)started config guard knows no config repo: it gets the files last sent, or, for a
        repo not sent yet by this actor, the files of the next poll."""
        for files in self.sent.values():
            self.peers.tell("config", msgspec.structs.replace(files, restored=True))

    def rearm(self, key: str) -> None:
        if self.intake_open and key in self.defs:
            material, _ = self.defs[key]
            self.timers.arm(f"poll:{key}", parse_duration(material.poll_interval), PollDue(key), self.me)

    def handle(self, message: Any) -> Any:
        match message:
            case PollDue(key=key):
                self.poll(key)
            case PollFinished():
                self.finished(message)
            case FilesFetched():
                self.fetched(message)
            case ConfigRepoFilesWanted():
                self.send_again()
            case _:
                return NotImplemented
        return None
