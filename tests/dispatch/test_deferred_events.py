"""``DeferredEventPublisher`` on its own: what is held, when it goes out, in what chunks, and which
owners fail when EventBridge refuses some entries (the moto-backed path is in test_event_batching)."""

from __future__ import annotations

import threading

from ig3.events import DeferredEventPublisher, DomainEvent, MemoryEventPublisher


def ev(i: int) -> DomainEvent:
    return DomainEvent("TaskAssigned", {"task_id": f"t{i}"}, f"t{i}:assigned:1")


class Calls(MemoryEventPublisher):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def publish(self, events):
        self.calls.append(len(events))
        super().publish(events)


class Refusing(Calls):
    """Takes every event except those named, as PutEvents reports per-entry failures."""

    def __init__(self, refuse: set[str]) -> None:
        super().__init__()
        self.refuse = refuse

    def put(self, events):
        self.calls.append(len(events))
        self.events += [e for e in events if e.event_id not in self.refuse]
        return [(e, "InternalFailure") for e in events if e.event_id in self.refuse]


def test_outside_a_batch_events_go_out_at_once():
    inner = Calls()
    pub = DeferredEventPublisher(inner)
    pub.publish([ev(1)])
    assert inner.calls == [1]


def test_a_batch_is_held_until_flush_and_sent_in_chunks_of_ten():
    inner = Calls()
    pub = DeferredEventPublisher(inner)
    with pub.collecting():
        for i in range(23):
            with pub.owned_by(f"m{i}"):
                pub.publish([ev(i)])
        assert inner.calls == []
        assert pub.flush() == set()
    assert inner.calls == [10, 10, 3]
    assert [e.event_id for e in inner.events] == [ev(i).event_id for i in range(23)]


def test_refused_events_name_their_messages_after_one_retry():
    inner = Refusing({"t2:assigned:1"})
    pub = DeferredEventPublisher(inner)
    with pub.collecting():
        for i in range(4):
            with pub.owned_by(f"m{i}"):
                pub.publish([ev(i)])
        assert pub.flush() == {"m2"}
    assert inner.calls == [4, 1]  # the refused entry was tried once more, alone
    assert sorted(e.event_id for e in inner.events) == sorted(ev(i).event_id for i in (0, 1, 3))


def test_events_left_when_a_batch_ends_without_flush_are_still_published():
    inner = Calls()
    pub = DeferredEventPublisher(inner)
    try:
        with pub.collecting():
            pub.publish([ev(1)])
            raise KeyError("the batch blew up")
    except KeyError:
        pass
    assert [e.event_id for e in inner.events] == [ev(1).event_id]


def test_another_thread_is_not_swept_into_a_batch():
    inner = Calls()
    pub = DeferredEventPublisher(inner)
    with pub.collecting():
        t = threading.Thread(target=pub.publish, args=([ev(9)],))
        t.start()
        t.join()
        assert [e.event_id for e in inner.events] == [ev(9).event_id]  # at once, on its own thread
        pub.publish([ev(1)])
        assert len(inner.events) == 1
        pub.flush()
    assert len(inner.events) == 2
