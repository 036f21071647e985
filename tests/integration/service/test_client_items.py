"""The Python client names the item and the key of an item it cannot send (against the real service)."""

from __future__ import annotations

import asyncio

import pytest

from connectors.client import AsyncClient, Client, InvalidArgument, InvalidInput
from tests.support.service import ServiceProcess

pytestmark = pytest.mark.service


def test_a_wrong_item_key_or_value_names_the_item_and_the_key(service: ServiceProcess) -> None:
    with Client(service.grpc_target) as client:
        with pytest.raises(InvalidArgument, match=r"^item 1: unknown key 'txt'; an item's keys are text, image") as err:
            client.embed(["fine", {"txt": "a typo"}])
        assert err.value.index == 1 and isinstance(err.value, InvalidInput)
        with pytest.raises(InvalidArgument, match=r"^item 0: 'image' takes the bytes of an image file.*got str"):
            client.embed([{"image": "photo.png"}])
        with pytest.raises(InvalidArgument, match=r"^item 0: 'text' takes a str or a list of str, got int"):
            client.embed([{"text": 42}])
        with pytest.raises(InvalidArgument, match=r"^query: unknown key 'txt'"):
            client.rerank({"txt": "q"}, ["d"])
        with pytest.raises(InvalidArgument, match=r"^item 1: unknown key 'body'"):
            client.rerank("q", ["d", {"body": "typo"}])
        # A stream hands on the items before the bad one, then raises (nothing after it was sent).
        got = []
        with pytest.raises(InvalidArgument, match=r"^item 2: unknown key 'txt'"):
            for row in client.embed_stream(["a", "b", {"txt": "typo"}, "d"]):
                got.append(row)
        assert len(got) == 2 and client.retried == 0
        assert client.embed(["still fine"]).shape[0] == 1


def test_the_async_client_names_them_too(service: ServiceProcess) -> None:
    async def run() -> list[object]:
        async with AsyncClient(service.grpc_target) as client:
            with pytest.raises(InvalidArgument, match=r"^item 0: unknown key 'img'"):
                await client.embed([{"img": b"x"}])
            got = []
            with pytest.raises(InvalidArgument, match=r"^item 1: unknown key 'txt'"):
                async for row in client.embed_stream(["a", {"txt": "typo"}]):
                    got.append(row)
            assert client.retried == 0
            return got

    assert len(asyncio.run(run())) == 1
