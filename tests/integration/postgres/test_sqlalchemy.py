"""The SQLAlchemy 2 helpers against a real database: declare, auto-embed, query."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import BigInteger, Integer, LargeBinary, Text, and_, cast, create_engine, select
from sqlalchemy.engine import URL
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from connectors.client import Client
from connectors.postgres.sqlalchemy import VECTOR, Vectorizer, embed, register_vector, rerank, rerank_rows, search
from tests.integration.postgres.conftest import cosines, drain, images
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.postgres, pytest.mark.service]


class Base(DeclarativeBase):
    pass


class Photo(Base):
    __tablename__ = "photos"
    id: Mapped[int] = mapped_column(primary_key=True)
    caption: Mapped[str] = mapped_column(Text)
    image: Mapped[bytes] = mapped_column(LargeBinary)
    embedding: Mapped[Any] = mapped_column(VECTOR(64), nullable=True)


def test_declare_embed_and_query(qvl_db: str, service: ServiceProcess) -> None:
    info = conninfo_to_dict(qvl_db)
    engine = create_engine(URL.create("postgresql+psycopg", username=str(info["user"]), host=str(info["host"]),
                                      port=int(info["port"]), database=str(info["dbname"])))
    register_vector(engine)
    photos = Vectorizer(Photo, text=[Photo.caption], images=[Photo.image])
    pics = images(12, offset=700)
    with engine.begin() as conn:
        Base.metadata.create_all(conn)
        assert photos.create(conn) is not None
        assert photos.create(conn) is None  # if_not_exists
    with Session(engine) as session, session.begin():
        session.add_all(Photo(id=i, caption=f"photo {i}", image=pics[i]) for i in range(12))
    drain(qvl_db, service.grpc_target)

    with Client(service.grpc_target) as client, engine.connect() as conn:
        assert photos.wait(conn, 1.0)
        stored = np.asarray(conn.execute(select(Photo.embedding).where(Photo.id == 3)).scalar_one())
        assert stored.shape == (64,)
        assert cosines(stored, client.embed([{"image": pics[3], "text": "photo 3"}])[0]) >= 0.9999

        value = np.asarray(conn.execute(select(embed("hello", instruction="Say hi."))).scalar_one())
        assert cosines(value, client.embed(["hello"], instruction="Say hi.")[0]) >= 0.9999
        from_columns = np.asarray(conn.execute(select(embed(Photo.caption, Photo.image))
                                               .where(Photo.id == 3)).scalar_one())
        assert cosines(from_columns, stored) >= 0.9999
        half = conn.execute(select(embed("hello", dimensions=32, halfvec=True))).scalar_one()
        assert len(half.to_list() if hasattr(half, "to_list") else half) == 32

        nearest = conn.execute(select(Photo.id).order_by(Photo.embedding.cosine_distance(embed("photo 5")))
                               .limit(3)).scalars().all()
        assert len(nearest) == 3

        r = rerank("photo", ["a", "b", "c"], top_k=2)
        rows = conn.execute(select(r.c.index, r.c.score)).all()
        want = client.rerank("photo", ["a", "b", "c"], top_k=2)
        assert [i for i, _ in rows] == [i + 1 for i, _ in want.ranking]
        r = rerank("noise", pics[:3])
        assert len(conn.execute(select(r.c.index)).all()) == 3

        hits = search("photos", "photo 7", k=4)
        found = conn.execute(select(Photo.id, hits.c.score).join(hits, hits.c.pk == cast(Photo.id, Text))
                             .order_by(hits.c.score.desc())).all()
        assert len(found) == 4
        assert [s for _, s in found] == sorted((s for _, s in found), reverse=True)
        by_image = conn.execute(select(photos.search(pics[2], k=2, rerank=False).c.pk)).scalars().all()
        assert len(by_image) == 2
    with engine.begin() as conn:
        photos.drop(conn)
    engine.dispose()


class Doc(Base):
    __tablename__ = "docs"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    shop: Mapped[int] = mapped_column(Integer)
    caption: Mapped[str] = mapped_column(Text)
    embedding: Mapped[Any] = mapped_column(VECTOR(32), nullable=True)


def test_search_pieces_filters_and_typed_keys(qvl_db: str, service: ServiceProcess) -> None:
    info = conninfo_to_dict(qvl_db)
    engine = create_engine(URL.create("postgresql+psycopg", username=str(info["user"]), host=str(info["host"]),
                                      port=int(info["port"]), database=str(info["dbname"])))
    register_vector(engine)
    docs = Vectorizer(Doc, text=[Doc.caption], dimensions=32, fulltext="english")
    with engine.begin() as conn:
        Doc.__table__.create(conn)  # type: ignore[attr-defined]
        docs.create(conn)
    with Session(engine) as session, session.begin():
        session.add_all(Doc(id=10**10 + i, shop=i % 3, caption=f"harbour lights {i}" if i % 5 == 0 else f"shop {i}")
                        for i in range(30))
    drain(qvl_db, service.grpc_target)
    in_shop = Doc.shop == 1
    with engine.connect() as conn:
        nearest = conn.execute(select(Doc.id, Doc.shop).where(in_shop)
                               .order_by(Doc.embedding.cosine_distance(docs.query_embedding("harbour"))).limit(5)).all()
        assert len(nearest) == 5 and {s for _, s in nearest} == {1}

        hits = docs.search("harbour", k=5, rerank=False, filter=in_shop, typed=True)
        typed = conn.execute(select(Doc.id, Doc.shop).join(hits, hits.c.key == Doc.id)
                             .order_by(hits.c.distance)).all()
        assert [i for i, _ in typed] == [i for i, _ in nearest]  # the same rows: exact under a filter
        as_text = search("docs", "harbour", k=5, rerank=False, filter="shop = 1")
        assert conn.execute(select(as_text.c.pk)).scalars().all() == [str(i) for i, _ in nearest]
        page = conn.execute(select(docs.search("harbour", k=2, rerank=False, filter=in_shop, offset=3,
                                               typed=True).c.key)).scalars().all()
        assert page == [i for i, _ in nearest][3:5]

        fused = docs.hybrid_search("harbour lights", k=6, weights=(0.0, 1.0), rerank=False, typed=True)
        rows = conn.execute(select(Doc.caption, fused.c.text_rank).join(fused, fused.c.key == Doc.id)
                            .order_by(fused.c.rrf.desc())).all()
        assert len(rows) == 6 and all(c.startswith("harbour") and r is not None for c, r in rows)

        ranked = conn.execute(select(docs.rerank_rows("harbour", select(Doc.id).where(Doc.shop == 0)))).all()
        assert len(ranked) == 10 and [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)
        listed = conn.execute(select(docs.rerank_rows("harbour", [10**10, 10**10 + 3], top_k=1))).all()
        assert len(listed) == 1 and listed[0][0] in (10**10, 10**10 + 3)
        assert conn.execute(select(rerank_rows("docs", "harbour", [10**10], key_type=BigInteger).c.key)
                            ).scalar_one() == 10**10
    engine.dispose()


def test_a_sqlalchemy_condition_travels_as_a_structured_filter(qvl_db: str, service: ServiceProcess) -> None:
    """Issue 19.1: a condition's values are data, whatever the session's string syntax. Before, they
    were compiled into the SQL text: with standard_conforming_strings off, 'back\\slash' read as
    'backslash' (no row found) and a quote after a backslash ended the string."""
    info = conninfo_to_dict(qvl_db)
    engine = create_engine(URL.create("postgresql+psycopg", username=str(info["user"]), host=str(info["host"]),
                                      port=int(info["port"]), database=str(info["dbname"])))
    register_vector(engine)
    docs = Vectorizer(Doc, text=[Doc.caption], dimensions=32, fulltext="simple")
    captions = ["plain 0", "back\\slash 1", "it's 2", "x\\' OR true -- 3", "plain 4", "\\' ) OR (true 5"]
    with engine.begin() as conn:
        Doc.__table__.create(conn)  # type: ignore[attr-defined]
        docs.create(conn)
    with Session(engine) as session, session.begin():
        session.add_all(Doc(id=i, shop=i % 3, caption=c) for i, c in enumerate(captions))
    drain(qvl_db, service.grpc_target)
    for setting in ("off", "on"):
        with engine.connect() as conn:
            conn.exec_driver_sql(f"SET standard_conforming_strings = {setting}")
            conn.exec_driver_sql("SET escape_string_warning = off")
            for i, caption in enumerate(captions):
                hits = docs.search("plain", k=10, rerank=False, filter=Doc.caption == caption, typed=True)
                assert conn.execute(select(hits.c.key)).scalars().all() == [i], (setting, caption)
                fused = docs.hybrid_search("plain", k=10, rerank=False, filter=Doc.caption == caption)
                assert conn.execute(select(fused.c.pk)).scalars().all() == [str(i)], (setting, caption)
            hits = docs.search("plain", k=10, rerank=False, filter=and_(Doc.shop.in_([0, 1]), ~Doc.caption.like("p%")),
                               typed=True)
            assert sorted(conn.execute(select(hits.c.key)).scalars().all()) == [1, 3]
            hits = search("docs", "plain", k=10, rerank=False, filter={"column": "id", "op": "<=", "value": 1})
            assert sorted(conn.execute(select(hits.c.pk)).scalars().all()) == ["0", "1"]
    with pytest.raises(TypeError, match="Pass SQL text"):
        docs.search("plain", filter=Doc.caption.startswith("a"))
    engine.dispose()
