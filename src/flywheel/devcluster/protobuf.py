"""Decoding the Kubernetes protobuf bodies kubectl sends for built-in kinds.

kubectl's typed commands (``kubectl create namespace``, ``create configmap``) send
``application/vnd.kubernetes.protobuf``: the bytes ``k8s\\0`` then a ``runtime.Unknown`` whose ``raw``
holds the object (k8s.io/api ``generated.proto``). client-go does not retry such a create as JSON, so
the emulator decodes the kinds kubectl creates this way and answers 415 for any other: Namespace and
ConfigMap (ObjectMeta's name, generateName, namespace, labels and annotations), and the
SelfSubjectAccessReview of ``kubectl auth can-i``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from flywheel.devcluster.store import ApiError, Obj

MAGIC = b"k8s\x00"
PROTOBUF = "application/vnd.kubernetes.protobuf"
OPENAPI_V2_PROTOBUF = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"


def _field(number: int, payload: bytes) -> bytes:
    assert len(payload) < 128  # one-byte lengths suffice here
    return bytes([number << 3 | 2, len(payload)]) + payload


# gnostic's openapi_v2.Document with only ``swagger`` and ``info`` (title, version): no definitions.
EMPTY_OPENAPI_V2 = _field(1, b"2.0") + _field(2, _field(1, b"Kubernetes") + _field(2, b"v1.37.0"))


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) for each field: ints for varints, bytes for length-delimited."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            yield number, value
        elif wire == 2:
            size, pos = _varint(data, pos)
            if pos + size > len(data):
                raise ValueError("truncated field")
            yield number, data[pos : pos + size]
            pos += size
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            yield number, data[pos : pos + width]
            pos += width
        else:
            raise ValueError(f"unsupported wire type {wire}")


def _text(value: int | bytes) -> str:
    if not isinstance(value, bytes):
        raise ValueError("expected a string field")
    return value.decode()


def _entry(value: int | bytes) -> tuple[str, bytes]:
    key, item = "", b""
    for number, part in fields(value if isinstance(value, bytes) else b""):
        if number == 1:
            key = _text(part)
        elif number == 2 and isinstance(part, bytes):
            item = part
    return key, item


def _object_meta(data: bytes) -> Obj:
    meta: Obj = {}
    names = {1: "name", 2: "generateName", 3: "namespace"}
    for number, value in fields(data):
        if number in names:
            if _text(value):
                meta[names[number]] = _text(value)
        elif number in (11, 12):
            key, item = _entry(value)
            meta.setdefault("labels" if number == 11 else "annotations", {})[key] = item.decode()
    return meta


def _namespace(data: bytes) -> Obj:
    obj: Obj = {"apiVersion": "v1", "kind": "Namespace", "metadata": {}}
    for number, value in fields(data):
        if number == 1 and isinstance(value, bytes):
            obj["metadata"] = _object_meta(value)
        elif number == 2 and isinstance(value, bytes):
            finalizers = [_text(v) for n, v in fields(value) if n == 1]
            obj["spec"] = {"finalizers": finalizers} if finalizers else {}
    return obj


def _config_map(data: bytes) -> Obj:
    obj: Obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}
    for number, value in fields(data):
        if number == 1 and isinstance(value, bytes):
            obj["metadata"] = _object_meta(value)
        elif number == 2:
            key, item = _entry(value)
            obj.setdefault("data", {})[key] = item.decode()
        elif number == 4:
            obj["immutable"] = bool(value)
        elif number == 3:
            raise ValueError("binaryData is not supported")
    return obj


def _attributes(data: bytes, names: dict[int, str]) -> Obj:
    return {names[n]: _text(v) for n, v in fields(data) if n in names and _text(v)}


def _access_review(data: bytes) -> Obj:
    """``kubectl auth can-i``'s SelfSubjectAccessReview (resource or non-resource attributes)."""
    spec: Obj = {}
    for number, value in fields(data):
        if number != 2 or not isinstance(value, bytes):
            continue
        for sub, attributes in fields(value):
            if sub == 1 and isinstance(attributes, bytes):
                names = {1: "namespace", 2: "verb", 3: "group", 4: "version", 5: "resource", 6: "subresource"}
                spec["resourceAttributes"] = _attributes(attributes, names | {7: "name"})
            elif sub == 2 and isinstance(attributes, bytes):
                spec["nonResourceAttributes"] = _attributes(attributes, {1: "path", 2: "verb"})
    return {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "metadata": {},
        "spec": spec,
    }


_KINDS: dict[tuple[str, str], Callable[[bytes], Obj]] = {
    ("authorization.k8s.io/v1", "SelfSubjectAccessReview"): _access_review,
    ("v1", "Namespace"): _namespace,
    ("v1", "ConfigMap"): _config_map,
}


def decode(body: bytes) -> Obj:
    """The JSON form of a protobuf-encoded built-in object, or 415 for kinds not decoded here."""
    try:
        if not body.startswith(MAGIC):
            raise ValueError("missing the k8s protobuf prefix")
        api_version = kind = ""
        raw = b""
        for number, value in fields(body[len(MAGIC) :]):
            if number == 1 and isinstance(value, bytes):
                for sub, text in fields(value):
                    if sub == 1:
                        api_version = _text(text)
                    elif sub == 2:
                        kind = _text(text)
            elif number == 2 and isinstance(value, bytes):
                raw = value
        decoder = _KINDS.get((api_version, kind))
        if decoder is None:
            raise ValueError(f"{api_version}/{kind} is not decoded from protobuf by this server")
        return decoder(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown format - accepted media types include: "
            f"application/json, application/yaml ({exc})",
        ) from exc
