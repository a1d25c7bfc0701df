"""Pandera models of the data the pipeline reads and writes, and lazy validation into reject records."""

from schemas.assignments import Assignments
from schemas.customers import CustomerTable, customer_table_schema
from schemas.features import RFMFeatures
from schemas.transactions import Transactions
from schemas.validation import REJECT_COLUMNS, SchemaFailure, ValidationOutcome, validate_rows

__all__ = [
    "REJECT_COLUMNS",
    "Assignments",
    "CustomerTable",
    "RFMFeatures",
    "SchemaFailure",
    "Transactions",
    "ValidationOutcome",
    "customer_table_schema",
    "validate_rows",
]
