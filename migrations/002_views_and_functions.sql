-- The seed's five analytics views and two stored functions.

CREATE VIEW mixin_compatibility_summary AS
SELECT node_type,
       count(*)                                                   AS combinations,
       sum(success_count)                                         AS total_successes,
       sum(failure_count)                                         AS total_failures,
       round(avg(compatibility_score), 3)                         AS avg_compatibility,
       count(*) FILTER (WHERE compatibility_score >= 0.8)         AS high_compatibility,
       count(*) FILTER (WHERE compatibility_score < 0.5)          AS low_compatibility,
       count(*) FILTER (WHERE jsonb_array_length(conflict_patterns) > 0) AS with_conflicts,
       CASE WHEN sum(success_count + failure_count) > 0
            THEN round(sum(success_count)::numeric / sum(success_count + failure_count), 3)
       END                                                        AS success_rate,
       max(last_updated)                                          AS last_updated
FROM mixin_compatibility_matrix
GROUP BY node_type;

-- Precision is weighted by user_weight; false negatives feed recall, not precision.
CREATE VIEW pattern_feedback_analysis AS
SELECT pattern_name,
       count(*)                                                        AS total_feedback,
       count(*) FILTER (WHERE feedback_type = 'true_positive')         AS true_positives,
       count(*) FILTER (WHERE feedback_type = 'false_positive')        AS false_positives,
       count(*) FILTER (WHERE feedback_type = 'false_negative')        AS false_negatives,
       count(*) FILTER (WHERE feedback_type = 'user_override')         AS user_overrides,
       sum(user_weight) FILTER (WHERE feedback_type = 'true_positive'
                                OR (feedback_type = 'user_override' AND is_correct)) AS weighted_tp,
       sum(user_weight) FILTER (WHERE feedback_type = 'false_positive'
                                OR (feedback_type = 'user_override' AND NOT is_correct)) AS weighted_fp,
       round((coalesce(sum(user_weight) FILTER (WHERE feedback_type = 'true_positive'
                         OR (feedback_type = 'user_override' AND is_correct)), 0) + 1)
             / (coalesce(sum(user_weight) FILTER (WHERE feedback_type IN ('true_positive', 'false_positive')
                         OR feedback_type = 'user_override' AND is_correct IS NOT NULL), 0) + 2), 3)
                                                                       AS precision_posterior_mean,
       round(avg(confidence_score), 3)                                 AS avg_confidence,
       max(created_at)                                                 AS last_feedback_at
FROM pattern_feedback_log
GROUP BY pattern_name;

CREATE VIEW performance_metrics_summary AS
SELECT node_type,
       phase,
       count(*)                                                            AS executions,
       round(avg(duration_ms), 3)                                          AS avg_duration_ms,
       percentile_cont(0.5)  WITHIN GROUP (ORDER BY duration_ms)           AS p50_duration_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms)           AS p95_duration_ms,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ms)           AS p99_duration_ms,
       round(avg(CASE WHEN cache_hit THEN 1 ELSE 0 END), 3)                AS cache_hit_rate,
       round(avg(CASE WHEN success THEN 1 ELSE 0 END), 3)                  AS success_rate,
       round(avg(quality_score), 3)                                        AS avg_quality_score,
       max(created_at)                                                     AS last_execution_at
FROM generation_performance_metrics
GROUP BY node_type, phase;

CREATE VIEW template_cache_efficiency AS
SELECT template_name,
       template_type,
       sum(access_count)                                                  AS access_count,
       sum(hit_count)                                                     AS hit_count,
       sum(miss_count)                                                    AS miss_count,
       sum(eviction_count)                                                AS eviction_count,
       CASE WHEN sum(access_count) > 0
            THEN round(sum(hit_count)::numeric / sum(access_count), 3) END AS hit_rate,
       round(avg(load_time_ms), 3)                                        AS avg_load_time_ms,
       max(size_bytes)                                                    AS size_bytes,
       count(DISTINCT content_hash)                                       AS content_versions,
       max(last_accessed_at)                                              AS last_accessed_at
FROM template_cache_metadata
GROUP BY template_name, template_type;

CREATE VIEW event_processing_health AS
SELECT event_type,
       count(*)                                                             AS events,
       round(avg(CASE WHEN success THEN 1 ELSE 0 END), 4)                   AS success_rate,
       percentile_cont(0.5)  WITHIN GROUP (ORDER BY processing_duration_ms) AS p50_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY processing_duration_ms) AS p95_ms,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY processing_duration_ms) AS p99_ms,
       round(avg(queue_wait_time_ms), 3)                                    AS avg_queue_wait_ms,
       sum(retry_count)                                                     AS total_retries,
       round(avg(batch_size), 1)                                            AS avg_batch_size,
       CASE WHEN avg(CASE WHEN success THEN 1 ELSE 0 END) >= 0.95
             AND percentile_cont(0.95) WITHIN GROUP (ORDER BY processing_duration_ms) < 200
            THEN 'healthy'
            WHEN avg(CASE WHEN success THEN 1 ELSE 0 END) >= 0.90 THEN 'degraded'
            ELSE 'unhealthy' END                                            AS health,
       max(created_at)                                                      AS last_event_at
FROM event_processing_metrics
GROUP BY event_type;

-- Record one success/failure of a mixin combination. The combination is stored sorted and
-- de-duplicated, so {A,B} and {B,A} are one row. Score: Laplace-smoothed success rate.
CREATE FUNCTION update_mixin_compatibility(
    p_node_type TEXT,
    p_mixins    TEXT[],
    p_success   BOOLEAN,
    p_conflict  JSONB DEFAULT NULL,
    p_weight    NUMERIC DEFAULT 1.0
) RETURNS UUID
LANGUAGE plpgsql AS $$
DECLARE
    v_combo TEXT[] := ARRAY(SELECT DISTINCT m FROM unnest(p_mixins) AS m ORDER BY m);
    v_id    UUID;
BEGIN
    INSERT INTO mixin_compatibility_matrix AS t
           (node_type, mixin_combination, success_count, failure_count, compatibility_score,
            conflict_patterns, learning_weight, last_updated)
    VALUES (p_node_type, v_combo,
            CASE WHEN p_success THEN 1 ELSE 0 END,
            CASE WHEN p_success THEN 0 ELSE 1 END,
            CASE WHEN p_success THEN 0.667 ELSE 0.333 END,
            CASE WHEN p_conflict IS NULL THEN '[]'::jsonb ELSE jsonb_build_array(p_conflict) END,
            p_weight, now())
    ON CONFLICT (node_type, mixin_combination) DO UPDATE SET
        success_count       = t.success_count + EXCLUDED.success_count,
        failure_count       = t.failure_count + EXCLUDED.failure_count,
        compatibility_score = round((t.success_count + EXCLUDED.success_count + 1)::numeric
                                    / (t.success_count + t.failure_count + 3), 3),
        conflict_patterns   = CASE WHEN p_conflict IS NULL OR t.conflict_patterns @> jsonb_build_array(p_conflict)
                                   THEN t.conflict_patterns
                                   ELSE t.conflict_patterns || jsonb_build_array(p_conflict) END,
        learning_weight     = EXCLUDED.learning_weight,
        last_updated        = now()
    RETURNING id INTO v_id;
    RETURN v_id;
END;
$$;

-- Record one feedback row; idempotent on the event id (a replayed event is not counted twice).
CREATE FUNCTION record_pattern_feedback(
    p_id             UUID,
    p_pattern_name   TEXT,
    p_feedback_type  TEXT,
    p_user_weight    NUMERIC DEFAULT 1.0,
    p_is_correct     BOOLEAN DEFAULT NULL,
    p_confidence     NUMERIC DEFAULT NULL,
    p_metadata       JSONB DEFAULT '{}'::jsonb,
    p_correlation_id UUID DEFAULT NULL
) RETURNS UUID
LANGUAGE plpgsql AS $$
DECLARE
    v_id UUID := coalesce(p_id, gen_random_uuid());
BEGIN
    INSERT INTO pattern_feedback_log
           (id, pattern_name, feedback_type, user_weight, is_correct, confidence_score,
            metadata, correlation_id)
    VALUES (v_id, p_pattern_name, p_feedback_type, p_user_weight,
            coalesce(p_is_correct, CASE p_feedback_type WHEN 'true_positive' THEN true
                                                        WHEN 'false_positive' THEN false END),
            p_confidence, coalesce(p_metadata, '{}'::jsonb), p_correlation_id)
    ON CONFLICT (id) DO NOTHING;
    RETURN v_id;
END;
$$;
