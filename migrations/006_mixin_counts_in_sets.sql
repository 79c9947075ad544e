-- Mixin counts for many (node type, combination) groups in one statement. The matrix sink
-- called update_mixin_compatibility() once per group: ~110 µs a result, which capped learning
-- at ~9,000 results/s; one set-based upsert per batch costs ~40 µs a result. The per-group
-- function is now this one applied to one group, so both count alike.
--
-- A combination travels as its mixin names joined by chr(31) (unit separator), since
-- PostgreSQL arrays of arrays must be rectangular; names are deduplicated and sorted here.
CREATE FUNCTION add_mixin_counts(
    p_node_types   TEXT[],
    p_combinations TEXT[],
    p_successes    INTEGER[],
    p_failures     INTEGER[],
    p_weight       NUMERIC DEFAULT 1.0
) RETURNS INTEGER
LANGUAGE plpgsql AS $$
DECLARE
    v_rows INTEGER;
BEGIN
    IF EXISTS (SELECT 1 FROM unnest(p_successes, p_failures) AS u(s, f) WHERE s < 0 OR f < 0) THEN
        RAISE EXCEPTION 'counts must not be negative';
    END IF;
    WITH groups AS (
        SELECT u.n AS node_type,
               ARRAY(SELECT DISTINCT m FROM unnest(string_to_array(u.c, chr(31))) AS m
                     WHERE m <> '' ORDER BY m) AS combo,
               u.s, u.f
        FROM unnest(p_node_types, p_combinations, p_successes, p_failures) AS u(n, c, s, f)
    ), summed AS (
        SELECT node_type, combo, sum(s)::int AS s, sum(f)::int AS f
        FROM groups GROUP BY node_type, combo
    )
    INSERT INTO mixin_compatibility_matrix AS t
           (node_type, mixin_combination, success_count, failure_count, compatibility_score,
            learning_weight, last_updated)
    SELECT node_type, combo, s, f, round((s + 1)::numeric / (s + f + 2), 3), p_weight, now()
    FROM summed ORDER BY node_type, combo  -- one lock order for concurrent batches
    ON CONFLICT (node_type, mixin_combination) DO UPDATE SET
        success_count       = t.success_count + EXCLUDED.success_count,
        failure_count       = t.failure_count + EXCLUDED.failure_count,
        compatibility_score = round((t.success_count + EXCLUDED.success_count + 1)::numeric
                                    / (t.success_count + t.failure_count
                                       + EXCLUDED.success_count + EXCLUDED.failure_count + 2), 3),
        learning_weight     = EXCLUDED.learning_weight,
        last_updated        = now();
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    RETURN v_rows;
END;
$$;

CREATE OR REPLACE FUNCTION update_mixin_compatibility(
    p_node_type TEXT,
    p_mixins    TEXT[],
    p_successes INTEGER,
    p_failures  INTEGER,
    p_weight    NUMERIC DEFAULT 1.0
) RETURNS UUID
LANGUAGE plpgsql AS $$
DECLARE
    v_id UUID;
BEGIN
    PERFORM add_mixin_counts(ARRAY[p_node_type], ARRAY[array_to_string(p_mixins, chr(31))],
                             ARRAY[p_successes], ARRAY[p_failures], p_weight);
    SELECT id INTO v_id FROM mixin_compatibility_matrix
    WHERE node_type = p_node_type
      AND mixin_combination = ARRAY(SELECT DISTINCT m FROM unnest(p_mixins) AS m
                                    WHERE m IS NOT NULL AND m <> '' ORDER BY m);
    RETURN v_id;
END;
$$;
