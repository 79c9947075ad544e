"""The local Kafka's server.properties for one node and for a node of a three-node cluster."""

from __future__ import annotations

from streams.infra.kafka import voters_of, write_config
from streams.runtime.topics import min_insync


def _props(path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


def test_a_single_node_keeps_one_replica_and_its_own_quorum(tmp_path):
    props = _props(write_config(tmp_path, 9092, 9093))
    assert props["controller.quorum.voters"] == "1@127.0.0.1:9093"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["min.insync.replicas"] == "1"
    assert "broker.session.timeout.ms" not in props


def test_a_cluster_node_votes_with_all_and_replicates_three_times(tmp_path):
    nodes = [{"node_id": i, "controller_port": 9100 + i} for i in (1, 2, 3)]
    voters = voters_of(nodes)
    assert voters == "1@127.0.0.1:9101,2@127.0.0.1:9102,3@127.0.0.1:9103"
    props = _props(write_config(tmp_path, 9202, 9102, node_id=2, voters=voters, replicas=3))
    assert props["node.id"] == "2" and props["controller.quorum.voters"] == voters
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9202,CONTROLLER://127.0.0.1:9102"
    for key in ("default.replication.factor", "offsets.topic.replication.factor",
                "transaction.state.log.replication.factor"):
        assert props[key] == "3", key
    assert props["min.insync.replicas"] == props["transaction.state.log.min.isr"] == "2"
    assert int(props["broker.session.timeout.ms"]) < 9000  # a dead node is fenced quickly


def test_min_insync_is_one_less_than_the_replicas_but_at_least_one():
    assert [min_insync(rf) for rf in (1, 2, 3, 5)] == [1, 1, 2, 4]
