"""The fake's indices, aliases and documents: what ``PUT``, ``DELETE``, ``_aliases``, ``_bulk`` and ``_doc`` do."""

from __future__ import annotations

import fnmatch
import json
from typing import Any

from tests.es_fake.profiles import ApiError, FakeIndex, _flatten, _not_found, _parse_date


class IndicesMixin:
    """Index, alias and document requests of :class:`tests.es_fake.server.FakeSearchServer`."""

    def _resolve(self, expression: str) -> list[str]:
        names: list[str] = []
        for part in expression.split(","):
            if any(c in part for c in "*?"):
                names += [n for n in self.indices if fnmatch.fnmatchcase(n, part)]
                names += [i for a, members in self.aliases.items() if fnmatch.fnmatchcase(a, part) for i in members]
            elif part in self.indices:
                names.append(part)
            elif part in self.aliases:
                names += sorted(self.aliases[part])
            else:
                raise _not_found(part)
        return list(dict.fromkeys(names))

    def _describe(self, index: FakeIndex, flat: bool) -> dict[str, Any]:
        aliases = {a: {} for a, members in self.aliases.items() if index.name in members}
        return {"aliases": aliases, "mappings": index.mappings, "settings": self._settings_view(index, flat)}

    @staticmethod
    def _settings_view(index: FakeIndex, flat: bool, wanted: str = "*") -> dict[str, Any]:
        chosen = {k: v for k, v in index.settings.items() if fnmatch.fnmatchcase(f"index.{k}", wanted)}
        if flat:
            return {f"index.{k}": v for k, v in chosen.items()}
        nested: dict[str, Any] = {}
        for key, value in sorted(chosen.items()):
            node, parts = nested, key.split(".")
            while len(parts) > 1 and isinstance(node.setdefault(parts[0], {}), dict):
                node, parts = node[parts[0]], parts[1:]
            node[".".join(parts)] = value
        return {"index": nested} if nested else {}

    def _check_settings(self, settings: dict[str, str]) -> None:
        known = {
            "number_of_shards",
            "number_of_replicas",
            "refresh_interval",
            "auto_expand_replicas",
            "max_result_window",
        }
        if self.profile.manager.approximate_threshold is not None:
            known.add("knn.advanced.approximate_threshold")  # k-NN 2.18.0.0 KNNSettings.java
        if self.profile.knn_plugin:
            known.add("knn")
            if not (self.profile.opensearch and self.profile.version >= (3,)):
                known.add("knn.space_type")
        for key in settings:
            if key not in known and not key.startswith("analysis."):
                raise ApiError(
                    400,
                    "illegal_argument_exception",
                    f"unknown setting [index.{key}] please check that any required plugins are installed, or check"
                    " the breaking changes documentation for removed settings",
                )

    def _check_mapping(self, mappings: dict[str, Any], settings: dict[str, str]) -> None:
        normalizers = {k.split(".")[2] for k in settings if k.startswith("analysis.normalizer.")}
        for name, spec in mappings.get("properties", {}).items():
            kind = spec.get("type")
            handled = {"keyword", "text", "date", "long", "float", "boolean"}
            if self.profile.knn_plugin:
                handled.add("knn_vector")
            if self.profile.dense_vector:
                handled.add("dense_vector")
            if kind not in handled:
                raise ApiError(
                    400, "mapper_parsing_exception", f"No handler for type [{kind}] declared on field [{name}]"
                )
            if spec.get("normalizer") and spec["normalizer"] not in normalizers:
                raise ApiError(
                    400, "mapper_parsing_exception", f"normalizer [{spec['normalizer']}] not found for field [{name}]"
                )
            if kind == "dense_vector" and not 1 <= int(spec.get("dims", 0)) <= 2048:
                raise ApiError(
                    400,
                    "mapper_parsing_exception",
                    f"The number of dimensions for field [{name}] should be in the range [1, 2048]",
                )
            if kind == "knn_vector":
                self._check_knn_vector(name, spec)

    def _check_knn_vector(self, name: str, spec: dict[str, Any]) -> None:
        if "dimension" not in spec:
            raise ApiError(400, "mapper_parsing_exception", f"Dimension value missing for vector: {name}")
        if not self.profile.opensearch:
            # Open Distro 1.13's KNNVectorFieldMapper: parameters store, doc_values, dimension, meta; at most 10,000.
            unknown = sorted(set(spec) - {"type", "dimension", "store", "doc_values", "meta"})
            if unknown:
                reason = f"unknown parameter [{unknown[0]}] on mapper [{name}] of type [knn_vector]"
                raise ApiError(400, "mapper_parsing_exception", f"Failed to parse mapping [_doc]: {reason}")
            if int(spec["dimension"]) > 10_000:
                reason = f"Dimension value cannot be greater than 10000 for vector: {name}"
                raise ApiError(400, "mapper_parsing_exception", f"Failed to parse mapping [_doc]: {reason}")
            return
        method = spec.get("method") or {}
        engine = method.get("engine")
        version = self.profile.version
        if engine == "lucene" and version < (2, 2):
            raise ApiError(400, "mapper_parsing_exception", "Invalid engine type: lucene")
        if engine == "nmslib" and version >= (3,):
            raise ApiError(
                400,
                "mapper_parsing_exception",
                "nmslib engine is deprecated in OpenSearch  and cannot be used for new index creation in OpenSearch"
                " from  3.0.0.",
            )
        if engine == "faiss" and method.get("space_type") == "cosinesimil" and version < (2, 19):
            raise ApiError(
                400,
                "mapper_parsing_exception",
                'Validation Failed: 1: "hnsw" with "faiss" configuration does not support space type: "cosinesimil".;',
            )

    def _create(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        if name in self.indices:
            raise ApiError(400, "resource_already_exists_exception", f"index [{name}] already exists", index=name)
        if name in self.aliases:
            raise ApiError(400, "invalid_index_name_exception", f"Invalid index name [{name}], already exists as alias")
        raw_settings = dict(body.get("settings") or {})
        raw_settings = raw_settings.get("index", raw_settings)
        settings = {
            k.removeprefix("index."): str(v).lower() if isinstance(v, bool) else str(v)
            for k, v in _flatten("", raw_settings, {}).items()
        }
        self._check_settings(settings)
        mappings = body.get("mappings") or {}
        self._check_mapping(mappings, settings)
        settings.setdefault("number_of_shards", str(self.profile.default_shards))
        settings.setdefault("number_of_replicas", "1")
        settings["version.created"] = self.profile.manager.version_id()
        self.indices[name] = FakeIndex(name, settings, json.loads(json.dumps(mappings)))
        return {"acknowledged": True, "shards_acknowledged": True, "index": name}

    def _delete(self, expression: str, params: dict[str, str]) -> dict[str, Any]:
        try:
            names = self._resolve(expression)
        except ApiError:
            if params.get("ignore_unavailable") == "true":
                return {"acknowledged": True}
            raise
        for name in names:
            del self.indices[name]
            for members in self.aliases.values():
                members.discard(name)
        self.aliases = {a: m for a, m in self.aliases.items() if m}
        return {"acknowledged": True}

    def _put_settings(self, expression: str, body: dict[str, Any]) -> dict[str, Any]:
        raw = body.get("index", body)
        changes = {
            k.removeprefix("index."): str(v).lower() if isinstance(v, bool) else str(v)
            for k, v in _flatten("", raw, {}).items()
        }
        self._check_settings(changes)
        for name in self._resolve(expression):
            if any(k in ("knn", "knn.space_type", "number_of_shards") for k in changes):
                raise ApiError(
                    400, "illegal_argument_exception", f"Can't update non dynamic settings {sorted(changes)}"
                )
            self.indices[name].settings.update(changes)
        return {"acknowledged": True}

    def _refresh(self, names: list[str]) -> dict[str, Any]:
        for name in names:
            self.indices[name].refresh()
        return {"_shards": {"total": len(names), "successful": len(names), "failed": 0}}

    def _get_alias(self, alias_pattern: str, index_expression: str | None) -> dict[str, Any]:
        names = self._resolve(index_expression) if index_expression else list(self.indices)
        out: dict[str, Any] = {}
        for name in names:
            matching = {
                a: {}
                for a, members in self.aliases.items()
                if name in members and fnmatch.fnmatchcase(a, alias_pattern)
            }
            if matching or alias_pattern == "*":
                out[name] = {"aliases": matching}
        if not out and alias_pattern != "*":
            reason = f"alias [{alias_pattern}] missing"
            raise ApiError(404, "aliases_not_found_exception", reason, answer={"error": reason, "status": 404})
        return out

    def _update_aliases(self, actions: list[dict[str, Any]]) -> dict[str, Any]:
        aliases = {a: set(m) for a, m in self.aliases.items()}
        doomed: set[str] = set()
        for action in actions:
            ((kind, spec),) = action.items()
            if kind == "remove_index":
                doomed.update(self._resolve(spec["index"]))
                continue
            if spec["index"] not in self.indices:
                raise _not_found(spec["index"])
            if kind == "add":
                aliases.setdefault(spec["alias"], set()).add(spec["index"])
            elif kind == "remove":
                self._check_remove(spec, aliases.get(spec["alias"], set()))
                aliases.get(spec["alias"], set()).discard(spec["index"])
        for alias in aliases:
            if alias in self.indices and alias not in doomed and aliases[alias]:
                raise ApiError(
                    400,
                    "invalid_alias_name_exception",
                    f"Invalid alias name [{alias}]: an index or data stream exists with the same name as the alias",
                )
        for name in doomed:
            del self.indices[name]
            for members in aliases.values():
                members.discard(name)
        self.aliases = {a: m for a, m in aliases.items() if m}
        return {"acknowledged": True}

    def _check_remove(self, spec: dict[str, Any], members: set[str]) -> None:
        """Refuse a ``remove`` alias action as the engine's version does.

        ``must_exist`` is an unknown field of ``AliasActions`` (``IndicesAliasesRequest.java``:
        the 400 ``x_content_parse_exception`` of OpenSearch #2949) before OpenSearch 2.12
        (#11210) and before Elasticsearch's fix elastic #65141 (issue #62642; taken here as
        7.11, the release after its backport #65209). Removing an alias the index does not
        carry answers 404 ``aliases_not_found_exception`` on OpenSearch whatever
        ``must_exist`` says (#11210 kept it so when all named aliases are missing) and on
        Elasticsearch before 8.14; Elasticsearch 8.14+ answers 200 unless ``must_exist`` is
        true (elastic #106304).
        """
        profile = self.profile
        if "must_exist" in spec and (profile.version < (2, 12) if profile.opensearch else profile.version < (7, 11)):
            raise ApiError(400, "x_content_parse_exception", "[1:60] [remove] unknown field [must_exist]")
        if spec["index"] in members:
            return
        if not profile.opensearch and profile.version >= (8, 14) and spec.get("must_exist") is not True:
            return
        raise ApiError(404, "aliases_not_found_exception", f"aliases [{spec['alias']}] missing")

    # -- documents ---------------------------------------------------------------------

    def _write_doc(self, expression: str, doc_id: str, body: dict[str, Any], params: dict[str, str], create: bool):
        """``PUT <index>/_create/<id>`` or ``PUT <index>/_doc/<id>`` with optional ``if_seq_no``/``if_primary_term``.

        A create of an existing id, or a conditional write whose seq_no no longer matches, is
        refused 409 ``version_conflict_engine_exception`` (``InternalEngine`` in Elasticsearch 7.x
        and OpenSearch; docs "Optimistic concurrency control").
        """
        (name,) = self._resolve(expression)
        index = self.indices[name]
        expected = params.get("if_seq_no")
        if create and doc_id in index.docs:
            self._conflict(index, doc_id, "document already exists (current version [1])")
        if expected is not None and (doc_id not in index.docs or index.seq_no[doc_id] != int(expected)):
            current = index.seq_no.get(doc_id, -2)
            self._conflict(
                index, doc_id, f"required seqNo [{expected}], primary term [1]. current document has seqNo [{current}]"
            )
        existed = doc_id in index.docs
        seq_no = index.write(doc_id, body)
        if params.get("refresh") == "true":
            index.refresh()
        result = "updated" if existed else "created"
        return {"_index": name, "_id": doc_id, "result": result, "_seq_no": seq_no, "_primary_term": 1}

    def _delete_doc(self, expression: str, doc_id: str, params: dict[str, str]) -> dict[str, Any]:
        (name,) = self._resolve(expression)
        index = self.indices[name]
        expected = params.get("if_seq_no")
        if doc_id not in index.docs:
            raise ApiError(
                404, "document_missing", f"[{doc_id}]: document missing", answer={"_id": doc_id, "result": "not_found"}
            )
        if expected is not None and index.seq_no[doc_id] != int(expected):
            self._conflict(
                index,
                doc_id,
                f"required seqNo [{expected}], primary term [1]. current document has seqNo [{index.seq_no[doc_id]}]",
            )
        del index.docs[doc_id]
        index.refresh()
        return {"_index": name, "_id": doc_id, "result": "deleted"}

    @staticmethod
    def _conflict(index: FakeIndex, doc_id: str, detail: str) -> None:
        raise ApiError(
            409,
            "version_conflict_engine_exception",
            f"[{doc_id}]: version conflict, {detail}",
            index=index.name,
            shard="0",
        )

    def _parse_error(self, index: FakeIndex, doc_id: str, source: dict[str, Any]) -> dict[str, Any] | None:
        for name, spec in index.properties.items():
            value = source.get(name)
            if value is None:
                continue
            kind = spec["type"]
            if kind in ("knn_vector", "dense_vector"):
                expected = int(spec.get("dimension", spec.get("dims", 0)))
                if not isinstance(value, list) or len(value) != expected:
                    given = len(value) if isinstance(value, list) else 1
                    reason = (
                        f"Vector dimension mismatch. Expected: {expected}, Given: {given}"
                        if kind == "knn_vector"
                        else f"The [dims] of the dense_vector field [{name}] should be [{expected}] but was [{given}]"
                    )
                    return {"type": "mapper_parsing_exception", "reason": reason}
            if kind == "date":
                for item in value if isinstance(value, list) else [value]:
                    try:
                        _parse_date(item)
                    except ValueError:
                        return {
                            "type": "mapper_parsing_exception",
                            "reason": f"failed to parse field [{name}] of type [date] in document with id '{doc_id}'."
                            f" Preview of field's value: '{item}'",
                        }
        return None

    def _bulk(self, lines: list[dict[str, Any]], default_index: str | None) -> dict[str, Any]:
        items = []
        every = self.profile.faults.item_rejections
        for position, (action, source) in enumerate(zip(lines[0::2], lines[1::2])):
            ((op, meta),) = action.items()
            target = meta.get("_index", default_index)
            names = self._resolve(target)
            if len(names) != 1:
                raise ApiError(400, "illegal_argument_exception", f"no write index is defined for alias [{target}]")
            index = self.indices[names[0]]
            doc_id = str(meta["_id"])
            result: dict[str, Any] = {"_index": index.name, "_id": doc_id}
            error = self._parse_error(index, doc_id, source)
            refused = self._rejections.get((index.name, doc_id), 0)
            if every and (
                0 < refused < self.profile.faults.rejection_rounds or (not refused and position % every == 0)
            ):
                self._rejections[(index.name, doc_id)] = refused + 1
                error = {
                    "type": self.profile.rejected_execution,
                    "reason": "rejected execution of primary operation [shard_detail=[fake][0][P], shard_queue=200]"
                    " on EsThreadPoolExecutor[name = fake-node/write, queue capacity = 200]",
                }
                result.update(status=429, error=error)
            elif self.profile.faults.flood_stage:
                block = "TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage watermark, index has read-only-allow-delete block"
                error = {"type": "cluster_block_exception", "reason": f"index [{index.name}] blocked by: [{block}];"}
                result.update(status=429, error=error)
            elif error:
                result.update(status=400, error=error)
            else:
                created = doc_id not in index.docs
                index.write(doc_id, source)
                result.update(status=201 if created else 200, result="created" if created else "updated")
            items.append({op: result})
        return {"took": 1, "errors": any("error" in next(iter(i.values())) for i in items), "items": items}

    def _get_doc(self, expression: str, doc_id: str) -> dict[str, Any]:
        names = self._resolve(expression)
        for name in names:
            index = self.indices[name]
            if doc_id in index.docs:
                found = {"_index": name, "_id": doc_id, "_seq_no": index.seq_no[doc_id], "_primary_term": 1}
                return {**found, "found": True, "_source": index.docs[doc_id]}
        answer = {"_index": names[0] if names else expression, "_id": doc_id, "found": False}
        raise ApiError(404, "document_missing", f"[{doc_id}]: document missing", answer=answer)
