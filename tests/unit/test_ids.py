import time

from services.common.ids import new_id


def test_ids_are_prefixed_unique_and_sort_by_creation() -> None:
    first = [new_id("usr") for _ in range(1000)]
    time.sleep(0.002)
    later = new_id("usr")
    assert all(i.startswith("usr_") and len(i) == 30 for i in first)
    assert len(set(first)) == 1000, "the random part keeps ids unique within a millisecond"
    assert max(first) < later, "ids made later sort after"
