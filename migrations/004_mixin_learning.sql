-- Mixin learning sinks: results are logged once per event id, then counted into
-- mixin_compatibility_matrix through update_mixin_compatibility(); conflicts the model finds
-- replace the conflict_patterns of every combination that holds the pair.

-- A node may use no mixin at all: that is a combination too (the empty one).
ALTER TABLE mixin_compatibility_matrix DROP CONSTRAINT mixin_compatibility_matrix_mixin_combination_check;
ALTER TABLE mixin_compatibility_matrix ADD CONSTRAINT mixin_compatibility_matrix_mixin_combination_check
    CHECK (cardinality(mixin_combination) <= 32);

-- One row per GenerationResult event: the matrix counts only rows that were new here, so a
-- replayed batch is counted once.
CREATE TABLE mixin_results_log (
    id                UUID PRIMARY KEY,
    node_type         VARCHAR(50) NOT NULL
                      CHECK (node_type IN ('effect', 'compute', 'reducer', 'orchestrator')),
    mixin_combination TEXT[]      NOT NULL CHECK (cardinality(mixin_combination) <= 32),
    success           BOOLEAN     NOT NULL,
    source            VARCHAR(100) NOT NULL DEFAULT 'pipeline',
    failure_reason    TEXT,
    correlation_id    UUID,
    occurred_at       TIMESTAMPTZ NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_mrl_node_combo  ON mixin_results_log (node_type, mixin_combination);
CREATE INDEX idx_mrl_occurred_at ON mixin_results_log (occurred_at DESC);
CREATE INDEX idx_mrl_source      ON mixin_results_log (source);

-- Batch form: add counts of successes and failures of one combination in one call.
CREATE FUNCTION update_mixin_compatibility(
    p_node_type TEXT,
    p_mixins    TEXT[],
    p_successes INTEGER,
    p_failures  INTEGER,
    p_weight    NUMERIC DEFAULT 1.0
) RETURNS UUID
LANGUAGE plpgsql AS $$
DECLARE
    v_combo TEXT[] := ARRAY(SELECT DISTINCT m FROM unnest(p_mixins) AS m ORDER BY m);
    v_id    UUID;
BEGIN
    IF p_successes < 0 OR p_failures < 0 THEN
        RAISE EXCEPTION 'counts must not be negative (successes %, failures %)', p_successes, p_failures;
    END IF;
    INSERT INTO mixin_compatibility_matrix AS t
           (node_type, mixin_combination, success_count, failure_count, compatibility_score,
            learning_weight, last_updated)
    VALUES (p_node_type, v_combo, p_successes, p_failures,
            round((p_successes + 1)::numeric / (p_successes + p_failures + 2), 3), p_weight, now())
    ON CONFLICT (node_type, mixin_combination) DO UPDATE SET
        success_count       = t.success_count + EXCLUDED.success_count,
        failure_count       = t.failure_count + EXCLUDED.failure_count,
        compatibility_score = round((t.success_count + EXCLUDED.success_count + 1)::numeric
                                    / (t.success_count + t.failure_count
                                       + EXCLUDED.success_count + EXCLUDED.failure_count + 2), 3),
        learning_weight     = EXCLUDED.learning_weight,
        last_updated        = now()
    RETURNING id INTO v_id;
    RETURN v_id;
END;
$$;

-- The single-event form (migration 002) becomes a call to the batch form, so the counting and
-- scoring rule lives in one place; it still appends one conflict object when given.
CREATE OR REPLACE FUNCTION update_mixin_compatibility(
    p_node_type TEXT,
    p_mixins    TEXT[],
    p_success   BOOLEAN,
    p_conflict  JSONB DEFAULT NULL,
    p_weight    NUMERIC DEFAULT 1.0
) RETURNS UUID
LANGUAGE plpgsql AS $$
DECLARE
    v_id UUID := update_mixin_compatibility(p_node_type, p_mixins, p_success::int, (NOT p_success)::int,
                                            p_weight);
BEGIN
    IF p_conflict IS NOT NULL THEN
        UPDATE mixin_compatibility_matrix
        SET conflict_patterns = conflict_patterns || jsonb_build_array(p_conflict)
        WHERE id = v_id AND NOT conflict_patterns @> jsonb_build_array(p_conflict);
    END IF;
    RETURN v_id;
END;
$$;

-- The model's current conflicts for one node type (a JSON array of objects with "pair": [a, b]
-- and the evidence). Every combination of that node type holding a pair gets exactly the
-- conflicts it holds; pairs no longer in conflict disappear. The pair's own row is created
-- when missing, so each conflict is visible even if that pair was never generated alone.
CREATE FUNCTION replace_mixin_conflicts(p_node_type TEXT, p_conflicts JSONB) RETURNS INTEGER
LANGUAGE plpgsql AS $$
DECLARE
    v_rows INTEGER;
BEGIN
    IF jsonb_typeof(p_conflicts) <> 'array' THEN
        RAISE EXCEPTION 'conflicts must be a JSON array';
    END IF;
    INSERT INTO mixin_compatibility_matrix (node_type, mixin_combination, success_count, failure_count)
    SELECT p_node_type, ARRAY(SELECT jsonb_array_elements_text(c->'pair') AS m ORDER BY m), 0, 0
    FROM jsonb_array_elements(p_conflicts) AS c
    ON CONFLICT (node_type, mixin_combination) DO NOTHING;

    UPDATE mixin_compatibility_matrix AS t
    SET conflict_patterns = coalesce((
            SELECT jsonb_agg(c ORDER BY c->'pair')
            FROM jsonb_array_elements(p_conflicts) AS c
            WHERE t.mixin_combination @> ARRAY(SELECT jsonb_array_elements_text(c->'pair'))), '[]'::jsonb),
        last_updated = now()
    WHERE t.node_type = p_node_type
      AND (t.conflict_patterns <> '[]'::jsonb OR EXISTS (
            SELECT 1 FROM jsonb_array_elements(p_conflicts) AS c
            WHERE t.mixin_combination @> ARRAY(SELECT jsonb_array_elements_text(c->'pair'))));
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    RETURN v_rows;
END;
$$;
