"""Price book: exact decimals, one ceiling rounding, resolution order, validation."""

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ig3.billing.pricing import PriceBook, PricingError, price_book

DOC = """{
  "default": {
    "edge": {"prompt_per_1k": "1", "completion_per_1k": "2", "kinds": {"task": {"per_request": "7"}}},
    "cloud": {"prompt_per_1k": 3, "completion_per_1k": 0.5, "sagemaker_per_second": "10",
              "estimate_sagemaker_seconds": "2.5"}
  },
  "models": {"M": {"edge": {"completion_per_1k": "0.001", "kinds": {"embedding": {"prompt_per_1k": "0.25"}}}}}
}"""


def test_exact_decimal_and_single_ceiling_rounding():
    book = PriceBook.from_json(DOC)
    # 1500 prompt * 3/1000 = 4.5; 1000 completion * 0.5/1000 = 0.5; 1234 ms * 10/1000 = 12.34 -> 17.34 -> 18
    assert book.exact_cost(
        "x", "cloud", "chat", prompt_tokens=1500, completion_tokens=1000, sagemaker_ms=1234
    ) == Decimal("17.34")
    assert (
        book.cost("x", "cloud", "chat", prompt_tokens=1500, completion_tokens=1000, sagemaker_ms=1234) == 18
    )
    # 0.1 as a JSON float is exactly 0.1 here (parse_float=Decimal), not 0.1000000000000000055...
    assert PriceBook.from_json('{"default": {"edge": {"prompt_per_1k": 0.1}, "cloud": {}}}').exact_cost(
        "x", "edge", "chat", prompt_tokens=10_000, completion_tokens=0
    ) == Decimal("1")


def test_resolution_order_model_kind_then_model_then_default():
    book = PriceBook.from_json(DOC)
    r = book.rates("m", "edge", "embedding")  # model names are case-insensitive
    assert (r.prompt_per_1k, r.completion_per_1k) == (Decimal("0.25"), Decimal("0.001"))
    r = book.rates("M", "edge", "task")  # default's per-kind fee still applies under a model
    assert r.per_request == Decimal(7) and r.prompt_per_1k == Decimal(1)
    assert book.cost("unknown-model", "edge", "task", prompt_tokens=0, completion_tokens=0) == 7
    assert book.knows("M") and not book.knows("unknown-model")


def test_sagemaker_time_only_on_cloud_and_in_estimates():
    book = PriceBook.from_json(DOC)
    assert book.cost("x", "edge", "chat", prompt_tokens=0, completion_tokens=0, sagemaker_ms=99_000) == 0
    # estimate = prompt 1000*3/1000 + max_tokens 2000*0.5/1000 + 2.5 s * 10 = 3 + 1 + 25
    assert book.estimate("x", "cloud", "chat", 1000, 2000) == 29


@given(
    p=st.integers(0, 200_000), c=st.integers(0, 200_000), mt=st.integers(0, 200_000), ms=st.integers(0, 2_500)
)
def test_estimate_bounds_any_request_within_its_limits(p, c, mt, ms):
    book = PriceBook.from_json(DOC)
    c = min(c, mt)
    for route in ("edge", "cloud"):
        for kind in ("chat", "completion", "embedding", "task"):
            cost = book.cost("M", route, kind, prompt_tokens=p, completion_tokens=c, sagemaker_ms=ms)
            assert isinstance(cost, int) and cost >= 0
            assert cost <= book.estimate("M", route, kind, p, mt)


@pytest.mark.parametrize(
    "doc, message",
    [
        ('{"models": {}}', "default"),
        ('{"default": {"edge": {}}}', "cloud"),
        ('{"default": {"edge": {"prompt_per_1k": "-1"}, "cloud": {}}}', "non-negative"),
        ('{"default": {"edge": {"prompt_per_1k": "abc"}, "cloud": {}}}', "decimal"),
        ('{"default": {"edge": {"prompt_per_1k": true}, "cloud": {}}}', "number"),
        ('{"default": {"edge": {"promt_per_1k": "1"}, "cloud": {}}}', "unknown field"),
        ('{"default": {"edge": {}, "cloud": {}, "moon": {}}}', "unknown route"),
        ('{"default": {"edge": {"kinds": {"video": {}}}, "cloud": {}}}', "unknown kind"),
        ("not json", "JSON"),
    ],
)
def test_malformed_price_books_are_rejected_with_the_reason(doc, message):
    with pytest.raises(PricingError, match=message):
        PriceBook.from_json(doc)


def test_token_counts_must_be_non_negative_integers():
    book = PriceBook.from_json(DOC)
    for bad in (-1, 1.5, True):
        with pytest.raises(PricingError):
            book.cost("x", "edge", "chat", prompt_tokens=bad, completion_tokens=0)


def test_shipped_price_book_loads_and_env_override(tmp_path, monkeypatch):
    shipped = price_book()
    assert (
        shipped.cost("smollm2-135m-instruct", "edge", "chat", prompt_tokens=1000, completion_tokens=1000)
        == 150
    )
    path = tmp_path / "p.json"
    path.write_text(DOC)
    monkeypatch.setenv("IG3_PRICING_PATH", str(path))
    assert price_book().cost("x", "edge", "task", prompt_tokens=0, completion_tokens=0) == 7
