import pytest
from google.protobuf import field_mask_pb2

from services.common.errors import InvalidArgument
from services.common.fieldmask import changes
from shop.user.v1 import user_pb2

UPDATABLE = ("display_name", "email", "active")


def test_mask_names_exactly_what_changes() -> None:
    user = user_pb2.User(id="u", display_name="A", email="e@x.io")
    mask = field_mask_pb2.FieldMask(paths=["display_name", "active"])
    assert changes(mask, user, UPDATABLE) == {"display_name": "A", "active": False}


def test_no_mask_means_the_fields_that_were_given() -> None:
    user = user_pb2.User(id="u", email="e@x.io")
    assert changes(field_mask_pb2.FieldMask(), user, UPDATABLE) == {"email": "e@x.io"}


@pytest.mark.parametrize("paths", [["id"], ["create_time"], ["nope"], []])
def test_unknown_or_empty_paths_are_refused(paths: list[str]) -> None:
    with pytest.raises(InvalidArgument) as caught:
        changes(field_mask_pb2.FieldMask(paths=paths), user_pb2.User(id="u"), UPDATABLE)
    assert {v.field for v in caught.value.violations} == {"update_mask"}
