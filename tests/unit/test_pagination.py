import pytest

from services.common.errors import InvalidArgument
from services.common.pagination import PageTokens, page_size


def test_token_round_trips_and_is_bound_to_its_query() -> None:
    tokens = PageTokens("secret")
    token = tokens.encode("usr_123", query="user=a")
    assert tokens.decode(token, query="user=a") == "usr_123"
    assert tokens.decode("", query="user=a") is None
    with pytest.raises(InvalidArgument):
        tokens.decode(token, query="user=b")


@pytest.mark.parametrize("token", ["%%%", "abc", "eyJrIjoieCIsInEiOiIifQ", "A" * 40])
def test_forged_tokens_are_invalid_argument(token: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        PageTokens("secret").decode(token)
    assert [v.field for v in caught.value.violations] == ["page_token"]


def test_token_signed_with_another_secret_is_refused() -> None:
    with pytest.raises(InvalidArgument):
        PageTokens("other").decode(PageTokens("secret").encode("usr_1"))


def test_default_page_size() -> None:
    assert page_size(None) == 50
    assert page_size(7) == 7
