"""Unit tests for unwrapping iMIS JSON shapes and building Activity bodies."""

from datetime import datetime, timedelta, timezone

import pytest

from libs.common.imis import (
    ACTIVITY_PROPERTIES,
    activity_from_entity,
    build_activity_entity,
    naive_utc_timestamp,
    unwrap_entity,
    unwrap_row,
    unwrap_value,
)

PROPERTY = "Asi.Soa.Core.DataContracts.GenericPropertyData, Asi.Contracts"

IQA_ROW = {
    "$type": "Asi.Soa.Core.DataContracts.GenericEntityData, Asi.Contracts",
    "EntityTypeName": "Demo Members",
    "Properties": {
        "$type": "Asi.Soa.Core.DataContracts.GenericPropertyDataCollection, Asi.Contracts",
        "$values": [
            {"$type": PROPERTY, "Name": "ResultRow", "Value": {"$type": "System.Int32", "$value": 1}},
            {"$type": PROPERTY, "Name": "ID", "Value": "10231"},
            {"$type": PROPERTY, "Name": "Mobile", "Value": "(202) 555-0143"},
            {"$type": PROPERTY, "Name": "Email"},
            {"$type": PROPERTY, "Name": "IsMember", "Value": {"$type": "System.Boolean", "$value": True}},
            {"$type": PROPERTY, "Name": "Dues", "Value": {"$type": "System.Decimal", "$value": 125.5}},
            {
                "$type": PROPERTY,
                "Name": "JoinDate",
                "Value": {"$type": "System.DateTime", "$value": "2019-03-01T00:00:00"},
            },
        ],
    },
}


def test_iqa_row_string_column():
    assert unwrap_row(IQA_ROW)["ID"] == "10231"


def test_iqa_row_int_unwrapped():
    row = dict(IQA_ROW, Properties={"$values": [{"Name": "Count", "Value": {"$type": "System.Int32", "$value": 7}}]})
    assert unwrap_row(row) == {"Count": 7}


def test_iqa_row_missing_value_is_none():
    row = unwrap_row(IQA_ROW)
    assert "Email" in row
    assert row["Email"] is None


def test_iqa_row_boolean_and_decimal():
    row = unwrap_row(IQA_ROW)
    assert row["IsMember"] is True
    assert row["Dues"] == 125.5


def test_iqa_row_date_stays_string():
    assert unwrap_row(IQA_ROW)["JoinDate"] == "2019-03-01T00:00:00"


def test_iqa_row_drops_row_number():
    assert "ResultRow" not in unwrap_row(IQA_ROW)


def test_iqa_row_keeps_column_order():
    assert list(unwrap_row(IQA_ROW)) == ["ID", "Mobile", "Email", "IsMember", "Dues", "JoinDate"]


def test_entity_keeps_row_number():
    assert unwrap_entity(IQA_ROW)["ResultRow"] == 1


def test_entity_without_properties_is_empty():
    assert unwrap_entity({"$type": "x"}) == {}


def test_flat_row_passes_through():
    row = {"ID": "10231", "FullName": "Ana Ruiz", "Mobile": "(202) 555-0143", "Email": None}
    assert unwrap_row(row) == row


def test_flat_row_unwraps_typed_values():
    row = {"$type": "System.Object", "Count": {"$type": "System.Int32", "$value": 3}}
    assert unwrap_row(row) == {"Count": 3}


@pytest.mark.parametrize(
    ("wrapped", "expected"),
    [
        ({"$type": "System.Int32", "$value": 1}, 1),
        ({"$type": "System.String", "$value": "x"}, "x"),
        ({"$type": "System.String[]", "$values": ["FOL", "IQD"]}, ["FOL", "IQD"]),
        ({"$type": "Outer", "$value": {"$type": "System.Int64", "$value": 5}}, 5),
        ({"$type": "Some.Data", "Name": "n", "Inner": {"$type": "System.Int32", "$value": 2}}, {"Name": "n", "Inner": 2}),
        ([{"$type": "System.Int32", "$value": 1}, "a"], [1, "a"]),
        (None, None),
        ("plain", "plain"),
    ],
)
def test_unwrap_value(wrapped, expected):
    assert unwrap_value(wrapped) == expected


def test_timestamp_converts_to_utc():
    moment = datetime(2024, 5, 1, 9, 30, 15, 123456, tzinfo=timezone(timedelta(hours=-4)))
    assert naive_utc_timestamp(moment) == "2024-05-01T13:30:15"


def test_timestamp_naive_taken_as_utc():
    assert naive_utc_timestamp(datetime(2024, 5, 1, 9, 30, 0, 999)) == "2024-05-01T09:30:00"


def _properties(entity: dict) -> dict:
    return {p["Name"]: p["Value"] for p in entity["Properties"]["$values"]}


def test_activity_body_properties():
    sent_at = datetime(2024, 5, 1, 13, 30, tzinfo=timezone.utc)
    entity = build_activity_entity("10045", "TEXTUNSUB", sent_at, "Text Manager", "+12025550142")
    props = _properties(entity)
    assert props[ACTIVITY_PROPERTIES["party_id"]] == "10045"
    assert props[ACTIVITY_PROPERTIES["activity_type"]] == "TEXTUNSUB"
    assert props[ACTIVITY_PROPERTIES["category"]] == "Text Manager"
    assert props[ACTIVITY_PROPERTIES["uf_1"]] == "+12025550142"


def test_activity_body_wraps_date():
    sent_at = datetime(2024, 5, 1, 13, 30, tzinfo=timezone.utc)
    entity = build_activity_entity("10045", "TEXTUNSUB", sent_at, "Text Manager", "+12025550142")
    date = _properties(entity)["TRANSACTION_DATE"]
    assert date == {"$type": "System.DateTime", "$value": "2024-05-01T13:30:00"}


def test_activity_body_names_parent():
    sent_at = datetime(2024, 5, 1, 13, 30, tzinfo=timezone.utc)
    entity = build_activity_entity("10045", "TEXTUNSUB", sent_at, "Text Manager", "+12025550142")
    assert entity["PrimaryParentIdentity"]["IdentityElements"]["$values"] == ["10045"]


def test_activity_body_type_first():
    sent_at = datetime(2024, 5, 1, 13, 30, tzinfo=timezone.utc)
    entity = build_activity_entity("10045", "TEXTUNSUB", sent_at, "Text Manager", "+12025550142")
    assert next(iter(entity)) == "$type"
    assert all(next(iter(p)) == "$type" for p in entity["Properties"]["$values"])


def test_activity_seqn_from_identity():
    entity = {
        "Identity": {"IdentityElements": {"$values": ["812"]}},
        "Properties": {"$values": [{"Name": "PartyId", "Value": "10045"}, {"Name": "UF_1", "Value": "+12025550142"}]},
    }
    activity = activity_from_entity(entity)
    assert activity["seqn"] == "812"
    assert activity["party_id"] == "10045"
    assert activity["uf_1"] == "+12025550142"


def test_activity_seqn_from_property():
    entity = {"Properties": {"$values": [{"Name": "SEQN", "Value": {"$type": "System.Int32", "$value": 9}}]}}
    assert activity_from_entity(entity)["seqn"] == "9"
