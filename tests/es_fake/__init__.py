"""A wire-level fake of Elasticsearch 7.17, Open Distro/ESCloud 7.10 and OpenSearch 1.x-3.x.

No real search server can be installed from the package registries the development
machines reach, so this is a real HTTP server on 127.0.0.1 that answers the subset of the
REST API the project uses, as the engine under test would. Each behaviour names the
documentation or source it follows:

- ``GET /`` with that engine's version, distribution, tagline and build flavour, and the
  ``X-Elastic-Product`` header only where Elasticsearch 7.14+ sends it
  (elasticsearch-py 7.17 ``transport._ProductChecker``); OpenSearch in compatibility mode
  answers version 7.10.2 without ``distribution`` (OpenSearch PR #847 and #898) and keeps
  its tagline (grafana/opensearch-datasource#419 detects it by that), while ``GET /_nodes``
  still reports the real version (OpenSearch docs, "Rolling upgrade");
- index creation that accepts the mappings and settings that engine accepts and refuses
  the others with its error: stock Elasticsearch has no ``knn_vector``, OpenSearch no
  ``dense_vector``, OpenSearch 3 no index-level ``knn.space_type``; the Open Distro 1.13
  k-NN plugin (ESCloud 7.10) knows no ``method`` and stops at 10,000 dimensions
  (k-NN tag v1.13.0.0, ``KNNVectorFieldMapper``); OpenSearch refuses faiss with
  ``cosinesimil`` before 2.19 (k-NN #2376) and nmslib for new indices from 3.0;
- how the k-NN plugin resolves a field's space type: the field's ``method`` first, else the
  index-level ``knn.space_type``, except on indices created by 2.17 and 2.18, which fell back
  to l2 (k-NN issue #2296, fixed in 2.19.0 by #2374);
- ``_bulk`` with per-item errors (wrong vector dimension, unparseable date), aliases with
  atomic actions whose ``remove`` answers as each version does (``must_exist``, a missing
  alias: see ``IndicesMixin._check_remove``), ``_count``, ``_refresh`` (searches see
  documents only after one; each refresh writes a new segment per shard), settings (with
  ``index.version.created``, encoded as ``org.opensearch.Version`` does) and ``_meta``
  updates, ``_doc`` reads, ``_create`` and conditional ``_doc`` writes and deletes
  (``if_seq_no``, 409 on a conflict) and index deletion;
- ``_search``: ``knn`` (exact, whatever the engine would approximate; on OpenSearch 2.18 a
  native-engine segment under ``index.knn.advanced.approximate_threshold`` is scored by the
  exact search's formula, see ``SearchMixin._without_graph``), ``script_score`` with
  the k-NN plugin's ``knn_score`` or Elasticsearch's painless ``cosineSimilarity``, each
  scored by that engine's formula (see ``ServerProfile.score``), bool with term, terms and
  range filters, and ``multi_match`` scored by BM25 (k1 1.2, b 0.75) with each shard's own
  statistics, as Elasticsearch's default ``query_then_fetch`` does;
- documents routed to shards by id (a stable hash standing in for Elasticsearch's murmur3
  routing: only the per-shard statistics matter here).

A profile's :class:`Faults` add the failures real clusters answer with (see there).
``FakeSearchServer.requests`` records every request body so tests can assert the exact
mapping and queries on the wire; ``drop_bulk`` makes ``_bulk`` requests die mid-way (a
server gone during a build), ``gone`` every request; :meth:`FakeSearchServer.switch_to` swaps the profile
under existing indices, as a rolling upgrade or a lost node does.

Modules: ``profiles`` (the engines and their faults), ``server`` (HTTP and routing),
``indices`` (indices, aliases, documents) and ``search`` (queries and scores).
"""

from tests.es_fake.profiles import OPENSEARCH_VERSION_MASK, PROFILES, Faults, ServerProfile
from tests.es_fake.server import FakeSearchServer

__all__ = ["OPENSEARCH_VERSION_MASK", "PROFILES", "Faults", "FakeSearchServer", "ServerProfile"]
