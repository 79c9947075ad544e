"""Migrations on a fresh database per test (real PostgreSQL)."""

from __future__ import annotations

import asyncio
import shutil
import uuid

import asyncpg
import pytest

from streams.infra.migrate import MigrationError, migrate, migrations_dir
from tests.conftest import pg_fetch

TABLES = {"mixin_compatibility_matrix", "mixin_results_log", "pattern_feedback_log",
          "generation_performance_metrics", "template_cache_metadata", "event_processing_metrics",
          "metric_window_aggregates", "alerts", "schema_migrations"}
VIEWS = {"mixin_compatibility_summary", "pattern_feedback_analysis", "performance_metrics_summary",
         "template_cache_efficiency", "event_processing_health"}


def q(url: str, sql: str, *args):
    return asyncio.run(pg_fetch(url, sql, *args))


def test_objects_exist(migrated_db):
    tables = {r[0] for r in q(migrated_db, "SELECT tablename FROM pg_tables WHERE schemaname='public'")}
    assert tables == TABLES
    views = {r[0] for r in q(migrated_db, "SELECT viewname FROM pg_views WHERE schemaname='public'")}
    assert views == VIEWS
    funcs = {r[0] for r in q(migrated_db, "SELECT proname FROM pg_proc p JOIN pg_namespace n "
                                          "ON n.oid = p.pronamespace WHERE nspname='public'")}
    assert {"update_mixin_compatibility", "record_pattern_feedback"} <= funcs
    indexes = q(migrated_db, "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname='public'")
    assert len(indexes) >= 30
    gin = [r for r in indexes if "USING gin" in r["indexdef"]]
    assert len(gin) >= 7
    # UUID keys everywhere but the migrations ledger.
    pk_types = q(migrated_db, """
        SELECT c.table_name, c.data_type FROM information_schema.columns c
        WHERE c.table_schema='public' AND c.column_name='id'""")
    assert {r["data_type"] for r in pk_types} == {"uuid"}
    assert {r["table_name"] for r in pk_types} == TABLES - {"schema_migrations"}


def test_rerun_is_a_noop(migrated_db):
    before = q(migrated_db, "SELECT version, checksum, applied_at FROM schema_migrations ORDER BY 1")
    assert [r["version"] for r in before] == [1, 2, 3, 4, 5, 6]
    applied = asyncio.run(migrate(migrated_db, progress=lambda _: None))
    assert applied == []
    after = q(migrated_db, "SELECT version, checksum, applied_at FROM schema_migrations ORDER BY 1")
    assert before == after


def test_changed_file_is_refused(fresh_db, tmp_path):
    folder = tmp_path / "migrations"
    shutil.copytree(migrations_dir(), folder)
    asyncio.run(migrate(fresh_db, folder, progress=lambda _: None))
    target = folder / "002_views_and_functions.sql"
    target.write_text(target.read_text() + "\n-- edited after it was applied\n")
    shipped = sorted(int(f.name[:3]) for f in folder.glob("[0-9][0-9][0-9]_*.sql"))
    (folder / f"{shipped[-1] + 1:03d}_more.sql").write_text("CREATE TABLE should_not_exist (id int);")
    with pytest.raises(MigrationError, match="002_views_and_functions.sql was changed"):
        asyncio.run(migrate(fresh_db, folder, progress=lambda _: None))
    # Refused before anything else ran: the new one did not apply.
    assert not q(fresh_db, "SELECT 1 FROM pg_tables WHERE tablename='should_not_exist'")


def test_failed_migration_rolls_back(fresh_db, tmp_path):
    folder = tmp_path / "migrations"
    shutil.copytree(migrations_dir(), folder)
    shipped = sorted(int(f.name[:3]) for f in folder.glob("[0-9][0-9][0-9]_*.sql"))
    broken = f"{shipped[-1] + 1:03d}_broken.sql"
    (folder / broken).write_text("CREATE TABLE half_done (id int);\nSELECT * FROM no_such_table;")
    with pytest.raises(MigrationError, match=f"{broken} failed"):
        asyncio.run(migrate(fresh_db, folder, progress=lambda _: None))
    assert not q(fresh_db, "SELECT 1 FROM pg_tables WHERE tablename='half_done'")
    versions = [r[0] for r in q(fresh_db, "SELECT version FROM schema_migrations ORDER BY 1")]
    assert versions == shipped


def test_concurrent_runs_apply_once(fresh_db):
    async def both():
        return await asyncio.gather(*(migrate(fresh_db, progress=lambda _: None) for _ in range(3)))

    results = asyncio.run(both())
    shipped = len(list(migrations_dir().glob("[0-9][0-9][0-9]_*.sql")))
    assert shipped >= 5 and sorted(len(r) for r in results) == [0, 0, shipped]


@pytest.mark.parametrize("sql", [
    "INSERT INTO mixin_compatibility_matrix (node_type, mixin_combination) VALUES ('widget', '{MixinRetry}')",
    "INSERT INTO mixin_compatibility_matrix (node_type, mixin_combination, compatibility_score) "
    "VALUES ('effect', '{MixinRetry}', 1.5)",
    "INSERT INTO pattern_feedback_log (pattern_name, feedback_type) VALUES ('p', 'maybe')",
    "INSERT INTO pattern_feedback_log (pattern_name, feedback_type, user_weight) "
    "VALUES ('p', 'true_positive', -0.1)",
    "INSERT INTO generation_performance_metrics (correlation_id, node_type, phase, duration_ms) "
    "VALUES (gen_random_uuid(), 'effect', 'render', -1)",
    "INSERT INTO template_cache_metadata (template_name, template_type, content_hash) "
    "VALUES ('t', 'node', 'not-a-hash')",
    "INSERT INTO template_cache_metadata (template_name, template_type, content_hash, access_count) "
    "VALUES ('t', 'node', repeat('a', 64), 5)",
    "INSERT INTO event_processing_metrics (event_type, processing_duration_ms, success) "
    "VALUES ('x', 1, false)",
    "INSERT INTO metric_window_aggregates (metric_name, metric_type, labels_hash, window_start, "
    "window_end, sample_count, value_sum) VALUES ('m', 'gauge', repeat('a',64), now(), now(), 1, 1)",
    "INSERT INTO alerts (fingerprint, rule_name, severity, state, started_at) "
    "VALUES (repeat('a',64), 'r', 'critical', 'resolved', now())",
    "INSERT INTO pattern_feedback_log (pattern_name, feedback_type, metadata) "
    "VALUES ('p', 'true_positive', '[1]')",
])
def test_check_constraints_reject(migrated_db, sql):
    with pytest.raises(asyncpg.CheckViolationError):
        q(migrated_db, sql)


def test_functions_and_updated_at(migrated_db):
    q(migrated_db, "SELECT update_mixin_compatibility('effect', ARRAY['MixinRetry','MixinCaching'], true)")
    q(migrated_db, "SELECT update_mixin_compatibility('effect', ARRAY['MixinCaching','MixinRetry'], true)")
    q(migrated_db, "SELECT update_mixin_compatibility('effect', ARRAY['MixinRetry','MixinCaching'], false, "
                   "'{\"pair\": [\"MixinCaching\", \"MixinRetry\"]}'::jsonb)")
    rows = q(migrated_db, "SELECT * FROM mixin_compatibility_matrix")
    assert len(rows) == 1
    row = rows[0]
    assert row["mixin_combination"] == ["MixinCaching", "MixinRetry"]
    assert (row["success_count"], row["failure_count"]) == (2, 1)
    assert float(row["compatibility_score"]) == pytest.approx(3 / 5, abs=1e-3)
    assert row["updated_at"] > row["created_at"]
    summary = q(migrated_db, "SELECT * FROM mixin_compatibility_summary")[0]
    assert summary["with_conflicts"] == 1 and float(summary["success_rate"]) == pytest.approx(2 / 3, abs=1e-3)

    fid = uuid.uuid4()
    for _ in range(2):  # idempotent on the event id
        q(migrated_db, "SELECT record_pattern_feedback($1, 'bare_except', 'true_positive', 0.5)", fid)
    q(migrated_db, "SELECT record_pattern_feedback(NULL, 'bare_except', 'false_positive', 1.0)")
    analysis = q(migrated_db, "SELECT * FROM pattern_feedback_analysis")[0]
    assert (analysis["true_positives"], analysis["false_positives"]) == (1, 1)
    # Beta(1,1) prior: (0.5 + 1) / (1.5 + 2)
    assert float(analysis["precision_posterior_mean"]) == pytest.approx(1.5 / 3.5, abs=1e-3)


def test_batch_counts_and_conflict_replacement(migrated_db):
    q(migrated_db, "SELECT update_mixin_compatibility('reducer', ARRAY['MixinB','MixinA','MixinA'], 3, 1)")
    q(migrated_db, "SELECT update_mixin_compatibility('reducer', ARRAY['MixinA','MixinB'], 1, 0)")
    q(migrated_db, "SELECT update_mixin_compatibility('reducer', ARRAY['MixinA','MixinB','MixinC'], 0, 2)")
    q(migrated_db, "SELECT update_mixin_compatibility('reducer', ARRAY[]::text[], 1, 0)")  # no mixin
    rows = {tuple(r["mixin_combination"]): r
            for r in q(migrated_db, "SELECT * FROM mixin_compatibility_matrix")}
    ab = rows[("MixinA", "MixinB")]
    assert (ab["success_count"], ab["failure_count"]) == (4, 1)
    assert float(ab["compatibility_score"]) == pytest.approx(5 / 7, abs=1e-3)
    assert () in rows
    with pytest.raises(Exception, match="must not be negative"):
        q(migrated_db, "SELECT update_mixin_compatibility('reducer', ARRAY['MixinA'], -1, 0)")

    conflict = '[{"pair": ["MixinB", "MixinC"], "p_pair": 0.1}]'
    touched = q(migrated_db, f"SELECT replace_mixin_conflicts('reducer', '{conflict}'::jsonb)")[0][0]
    rows = {tuple(r["mixin_combination"]): r
            for r in q(migrated_db, "SELECT * FROM mixin_compatibility_matrix")}
    assert touched == 2  # {A,B,C} and the pair's own new row {B,C}
    assert rows[("MixinA", "MixinB", "MixinC")]["conflict_patterns"] == conflict
    assert rows[("MixinB", "MixinC")]["success_count"] == 0
    assert rows[("MixinA", "MixinB")]["conflict_patterns"] == "[]"
    q(migrated_db, "SELECT replace_mixin_conflicts('reducer', '[]'::jsonb)")  # no longer in conflict
    assert not q(migrated_db, "SELECT 1 FROM mixin_compatibility_matrix WHERE conflict_patterns <> '[]'")
