-- The seed's five tables: UUID keys, JSONB metadata with GIN indexes, CHECK constraints,
-- created_at/updated_at kept by a trigger. Rows written from events use the event id as key,
-- so a replayed batch is a no-op (ON CONFLICT (id) DO NOTHING).

CREATE OR REPLACE FUNCTION set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

CREATE TABLE mixin_compatibility_matrix (
    id                  UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    node_type           VARCHAR(50)  NOT NULL
                        CHECK (node_type IN ('effect', 'compute', 'reducer', 'orchestrator')),
    mixin_combination   TEXT[]       NOT NULL CHECK (cardinality(mixin_combination) BETWEEN 1 AND 32),
    compatibility_score NUMERIC(4,3) NOT NULL DEFAULT 0.5
                        CHECK (compatibility_score BETWEEN 0 AND 1),
    success_count       INTEGER      NOT NULL DEFAULT 0 CHECK (success_count >= 0),
    failure_count       INTEGER      NOT NULL DEFAULT 0 CHECK (failure_count >= 0),
    conflict_patterns   JSONB        NOT NULL DEFAULT '[]'::jsonb
                        CHECK (jsonb_typeof(conflict_patterns) = 'array'),
    learning_weight     NUMERIC(4,3) NOT NULL DEFAULT 1.0 CHECK (learning_weight BETWEEN 0 AND 1),
    metadata            JSONB        NOT NULL DEFAULT '{}'::jsonb
                        CHECK (jsonb_typeof(metadata) = 'object'),
    last_updated        TIMESTAMPTZ  NOT NULL DEFAULT now(),
    created_at          TIMESTAMPTZ  NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ  NOT NULL DEFAULT now(),
    CONSTRAINT uq_mixin_compat_node_combo UNIQUE (node_type, mixin_combination)
);
CREATE INDEX idx_mcm_node_type        ON mixin_compatibility_matrix (node_type);
CREATE INDEX idx_mcm_score            ON mixin_compatibility_matrix (compatibility_score DESC);
CREATE INDEX idx_mcm_last_updated     ON mixin_compatibility_matrix (last_updated DESC);
CREATE INDEX idx_mcm_combination_gin  ON mixin_compatibility_matrix USING GIN (mixin_combination);
CREATE INDEX idx_mcm_conflicts_gin    ON mixin_compatibility_matrix USING GIN (conflict_patterns);
CREATE INDEX idx_mcm_metadata_gin     ON mixin_compatibility_matrix USING GIN (metadata);
CREATE TRIGGER trg_mcm_updated_at BEFORE UPDATE ON mixin_compatibility_matrix
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE pattern_feedback_log (
    id               UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    pattern_name     VARCHAR(200) NOT NULL CHECK (length(pattern_name) > 0),
    feedback_type    VARCHAR(50)  NOT NULL
                     CHECK (feedback_type IN ('true_positive', 'false_positive',
                                              'false_negative', 'user_override')),
    confidence_score NUMERIC(4,3) CHECK (confidence_score BETWEEN 0 AND 1),
    user_weight      NUMERIC(4,3) NOT NULL DEFAULT 1.0 CHECK (user_weight BETWEEN 0 AND 1),
    is_correct       BOOLEAN,
    correlation_id   UUID,
    metadata         JSONB        NOT NULL DEFAULT '{}'::jsonb
                     CHECK (jsonb_typeof(metadata) = 'object'),
    created_at       TIMESTAMPTZ  NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ  NOT NULL DEFAULT now()
);
CREATE INDEX idx_pfl_pattern_name    ON pattern_feedback_log (pattern_name);
CREATE INDEX idx_pfl_feedback_type   ON pattern_feedback_log (feedback_type);
CREATE INDEX idx_pfl_created_at      ON pattern_feedback_log (created_at DESC);
CREATE INDEX idx_pfl_pattern_created ON pattern_feedback_log (pattern_name, created_at DESC);
CREATE INDEX idx_pfl_correlation     ON pattern_feedback_log (correlation_id);
CREATE INDEX idx_pfl_metadata_gin    ON pattern_feedback_log USING GIN (metadata);
CREATE TRIGGER trg_pfl_updated_at BEFORE UPDATE ON pattern_feedback_log
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE generation_performance_metrics (
    id                 UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    correlation_id     UUID         NOT NULL,
    node_type          VARCHAR(50)  NOT NULL
                       CHECK (node_type IN ('effect', 'compute', 'reducer', 'orchestrator')),
    phase              VARCHAR(100) NOT NULL CHECK (length(phase) > 0),
    duration_ms        NUMERIC(12,3) NOT NULL CHECK (duration_ms >= 0),
    cache_hit          BOOLEAN      NOT NULL DEFAULT false,
    worker_id          VARCHAR(200),
    quality_score      NUMERIC(4,3) CHECK (quality_score BETWEEN 0 AND 1),
    success            BOOLEAN      NOT NULL DEFAULT true,
    metadata           JSONB        NOT NULL DEFAULT '{}'::jsonb
                       CHECK (jsonb_typeof(metadata) = 'object'),
    created_at         TIMESTAMPTZ  NOT NULL DEFAULT now(),
    updated_at         TIMESTAMPTZ  NOT NULL DEFAULT now()
);
CREATE INDEX idx_gpm_correlation     ON generation_performance_metrics (correlation_id);
CREATE INDEX idx_gpm_node_type_phase ON generation_performance_metrics (node_type, phase);
CREATE INDEX idx_gpm_created_at      ON generation_performance_metrics (created_at DESC);
CREATE INDEX idx_gpm_success         ON generation_performance_metrics (success) WHERE NOT success;
CREATE INDEX idx_gpm_metadata_gin    ON generation_performance_metrics USING GIN (metadata);
CREATE TRIGGER trg_gpm_updated_at BEFORE UPDATE ON generation_performance_metrics
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE template_cache_metadata (
    id               UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    template_name    VARCHAR(200) NOT NULL CHECK (length(template_name) > 0),
    template_type    VARCHAR(50)  NOT NULL
                     CHECK (template_type IN ('node', 'mixin', 'macro', 'other')),
    worker_id        VARCHAR(200) NOT NULL DEFAULT '',
    content_hash     CHAR(64)     NOT NULL CHECK (content_hash ~ '^[0-9a-f]{64}$'),
    size_bytes       INTEGER      NOT NULL DEFAULT 0 CHECK (size_bytes >= 0),
    load_time_ms     NUMERIC(12,3) NOT NULL DEFAULT 0 CHECK (load_time_ms >= 0),
    access_count     BIGINT       NOT NULL DEFAULT 0 CHECK (access_count >= 0),
    hit_count        BIGINT       NOT NULL DEFAULT 0 CHECK (hit_count >= 0),
    miss_count       BIGINT       NOT NULL DEFAULT 0 CHECK (miss_count >= 0),
    eviction_count   BIGINT       NOT NULL DEFAULT 0 CHECK (eviction_count >= 0),
    last_accessed_at TIMESTAMPTZ,
    metadata         JSONB        NOT NULL DEFAULT '{}'::jsonb
                     CHECK (jsonb_typeof(metadata) = 'object'),
    created_at       TIMESTAMPTZ  NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ  NOT NULL DEFAULT now(),
    CONSTRAINT ck_tcm_access CHECK (access_count = hit_count + miss_count),
    CONSTRAINT uq_tcm_template_worker UNIQUE (template_name, worker_id)
);
CREATE INDEX idx_tcm_template_type  ON template_cache_metadata (template_type);
CREATE INDEX idx_tcm_content_hash   ON template_cache_metadata (content_hash);
CREATE INDEX idx_tcm_last_accessed  ON template_cache_metadata (last_accessed_at DESC);
CREATE INDEX idx_tcm_metadata_gin   ON template_cache_metadata USING GIN (metadata);
CREATE TRIGGER trg_tcm_updated_at BEFORE UPDATE ON template_cache_metadata
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE event_processing_metrics (
    id                     UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    event_type             VARCHAR(100) NOT NULL CHECK (length(event_type) > 0),
    topic                  VARCHAR(249),
    correlation_id         UUID,
    processing_duration_ms NUMERIC(12,3) NOT NULL CHECK (processing_duration_ms >= 0),
    queue_wait_time_ms     NUMERIC(12,3) NOT NULL DEFAULT 0 CHECK (queue_wait_time_ms >= 0),
    success                BOOLEAN      NOT NULL,
    retry_count            INTEGER      NOT NULL DEFAULT 0 CHECK (retry_count >= 0),
    batch_size             INTEGER      NOT NULL DEFAULT 1 CHECK (batch_size >= 1),
    error_message          TEXT,
    metadata               JSONB        NOT NULL DEFAULT '{}'::jsonb
                           CHECK (jsonb_typeof(metadata) = 'object'),
    created_at             TIMESTAMPTZ  NOT NULL DEFAULT now(),
    updated_at             TIMESTAMPTZ  NOT NULL DEFAULT now(),
    CONSTRAINT ck_epm_error_on_failure CHECK (success OR error_message IS NOT NULL)
);
CREATE INDEX idx_epm_event_type    ON event_processing_metrics (event_type);
CREATE INDEX idx_epm_created_at    ON event_processing_metrics (created_at DESC);
CREATE INDEX idx_epm_type_created  ON event_processing_metrics (event_type, created_at DESC);
CREATE INDEX idx_epm_failures      ON event_processing_metrics (created_at DESC) WHERE NOT success;
CREATE INDEX idx_epm_correlation   ON event_processing_metrics (correlation_id);
CREATE INDEX idx_epm_metadata_gin  ON event_processing_metrics USING GIN (metadata);
CREATE TRIGGER trg_epm_updated_at BEFORE UPDATE ON event_processing_metrics
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
