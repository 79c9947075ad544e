-- Windowed metric aggregates (one row per metric, label set and window) and alerts.

CREATE TABLE metric_window_aggregates (
    id              UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    metric_name     VARCHAR(200)     NOT NULL CHECK (length(metric_name) > 0),
    metric_type     VARCHAR(20)      NOT NULL CHECK (metric_type IN ('counter', 'gauge', 'histogram')),
    labels          JSONB            NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(labels) = 'object'),
    labels_hash     CHAR(64)         NOT NULL,
    window_start    TIMESTAMPTZ      NOT NULL,
    window_end      TIMESTAMPTZ      NOT NULL,
    sample_count    BIGINT           NOT NULL CHECK (sample_count >= 0),
    value_sum       DOUBLE PRECISION NOT NULL,
    value_min       DOUBLE PRECISION,
    value_max       DOUBLE PRECISION,
    p50             DOUBLE PRECISION,
    p95             DOUBLE PRECISION,
    p99             DOUBLE PRECISION,
    created_at      TIMESTAMPTZ      NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ      NOT NULL DEFAULT now(),
    CONSTRAINT ck_mwa_window CHECK (window_end > window_start),
    CONSTRAINT ck_mwa_minmax CHECK (value_min IS NULL OR value_max IS NULL OR value_min <= value_max),
    CONSTRAINT uq_mwa_series_window UNIQUE (metric_name, labels_hash, window_start, window_end)
);
CREATE INDEX idx_mwa_name_window ON metric_window_aggregates (metric_name, window_start DESC);
CREATE INDEX idx_mwa_window_end  ON metric_window_aggregates (window_end DESC);
CREATE INDEX idx_mwa_labels_gin  ON metric_window_aggregates USING GIN (labels);
CREATE TRIGGER trg_mwa_updated_at BEFORE UPDATE ON metric_window_aggregates
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE alerts (
    id               UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    fingerprint      CHAR(64)         NOT NULL,
    rule_name        VARCHAR(200)     NOT NULL CHECK (length(rule_name) > 0),
    severity         VARCHAR(20)      NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    state            VARCHAR(20)      NOT NULL
                     CHECK (state IN ('pending', 'firing', 'acknowledged', 'silenced', 'resolved')),
    value            DOUBLE PRECISION,
    threshold        DOUBLE PRECISION,
    labels           JSONB            NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(labels) = 'object'),
    annotations      JSONB            NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(annotations) = 'object'),
    escalation_level INTEGER          NOT NULL DEFAULT 0 CHECK (escalation_level >= 0),
    started_at       TIMESTAMPTZ      NOT NULL,
    acknowledged_at  TIMESTAMPTZ,
    acknowledged_by  VARCHAR(200),
    resolved_at      TIMESTAMPTZ,
    created_at       TIMESTAMPTZ      NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ      NOT NULL DEFAULT now(),
    CONSTRAINT ck_alerts_resolved CHECK (state <> 'resolved' OR resolved_at IS NOT NULL),
    CONSTRAINT ck_alerts_resolved_after CHECK (resolved_at IS NULL OR resolved_at >= started_at)
);
CREATE INDEX idx_alerts_fingerprint ON alerts (fingerprint, started_at DESC);
CREATE INDEX idx_alerts_open        ON alerts (severity, started_at DESC) WHERE state <> 'resolved';
CREATE INDEX idx_alerts_rule        ON alerts (rule_name);
CREATE INDEX idx_alerts_labels_gin  ON alerts USING GIN (labels);
CREATE TRIGGER trg_alerts_updated_at BEFORE UPDATE ON alerts
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
