//! Money and currencies: ISO 4217 codes with their minor-unit exponent, and the
//! one rounding rule of the product (half away from zero, to the currency's
//! minor unit). Amounts are `rust_decimal::Decimal`; there is no float anywhere.
//!
//! Two kinds of price (API.md § Conventions): an *amount* (a base price, a
//! flat fee, a payment) is at the currency's minor unit; a *unit price* (a
//! seat price, a meter's prices, a line's unit price) may have up to
//! [`MAX_UNIT_PRICE_PLACES`] places, because usage is priced in fractions of
//! a cent. Only a line's amount, `quantity × unit_price`, is rounded.

use std::fmt;
use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::DomainError;

/// The currencies Tally accepts, with their minor-unit exponent.
const CURRENCIES: &[(&str, u32)] = &[
    ("AUD", 2),
    ("BHD", 3),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("CZK", 2),
    ("DKK", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("HUF", 2),
    ("INR", 2),
    ("ISK", 0),
    ("JOD", 3),
    ("JPY", 0),
    ("KRW", 0),
    ("KWD", 3),
    ("MXN", 2),
    ("NOK", 2),
    ("NZD", 2),
    ("PLN", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("TND", 3),
    ("USD", 2),
    ("ZAR", 2),
];

/// The largest price or amount a plan may state, so that `seats × price` and
/// sums of lines stay far from `Decimal`'s 28-digit limit.
pub const MAX_AMOUNT: Decimal = Decimal::from_parts(0xA4C6_8000, 0x38D7E, 0, false, 0); // 1e15

/// The most decimal places of a unit price (as Stripe's `unit_amount_decimal`).
pub const MAX_UNIT_PRICE_PLACES: u32 = 12;

/// An ISO 4217 currency from the built-in table. Once built it is known-good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency(&'static str);

impl Currency {
    /// Parses an uppercase ISO 4217 code ("EUR"). Lowercase and unknown codes are
    /// rejected with a `Validation` error on field `currency`.
    pub fn parse(code: &str) -> Result<Currency, DomainError> {
        CURRENCIES
            .iter()
            .find(|(known, _)| *known == code)
            .map(|(known, _)| Currency(known))
            .ok_or_else(|| {
                DomainError::validation(
                    "currency",
                    format!("unknown currency {code:?}; expected an uppercase ISO 4217 code"),
                )
            })
    }

    /// The ISO 4217 code, e.g. "EUR".
    pub fn code(&self) -> &'static str {
        self.0
    }

    /// The number of decimal places of the minor unit (2 for EUR, 0 for JPY).
    pub fn minor_units(&self) -> u32 {
        CURRENCIES
            .iter()
            .find(|(known, _)| *known == self.0)
            .map(|(_, exponent)| *exponent)
            .expect("a Currency is only built from the table")
    }

    /// Every supported currency, in code order.
    pub fn all() -> impl Iterator<Item = Currency> {
        CURRENCIES.iter().map(|(code, _)| Currency(code))
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl FromStr for Currency {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Currency::parse(s)
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0)
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = String::deserialize(deserializer)?;
        Currency::parse(&code).map_err(serde::de::Error::custom)
    }
}

/// Rounds half away from zero to the currency's minor unit and rescales to
/// exactly that many places ("12.5" EUR → "12.50", "-0.005" EUR → "-0.01").
/// A zero result is never negative, so a credit of nothing prints as "0.00".
pub fn round_to_minor(amount: Decimal, currency: Currency) -> Decimal {
    let places = currency.minor_units();
    let mut rounded = amount.round_dp_with_strategy(places, RoundingStrategy::MidpointAwayFromZero);
    rounded.rescale(places);
    if rounded.is_zero() {
        rounded.set_sign_positive(true);
    }
    rounded
}

/// An amount given in the currency's minor units (a payment provider's
/// integer `amount`: 1250 EUR cents → 12.50, 1250 JPY → 1250, 1250 KWD fils
/// → 1.250), at the minor-unit scale; `None` beyond [`MAX_AMOUNT`].
pub fn from_minor_units(units: i64, currency: Currency) -> Option<Decimal> {
    let amount =
        Decimal::try_from_i128_with_scale(i128::from(units), currency.minor_units()).ok()?;
    (amount.abs() <= MAX_AMOUNT).then(|| round_to_minor(amount, currency))
}

/// The number of decimal places an amount really uses ("1.500" uses 1).
fn significant_places(amount: Decimal) -> u32 {
    amount.normalize().scale()
}

/// Checks a stated price: not negative, not above [`MAX_AMOUNT`], and no more
/// decimal places than the currency's minor unit. Returns it at the minor-unit
/// scale. `field` names the input in the error.
pub fn validate_price(
    field: &str,
    amount: Decimal,
    currency: Currency,
) -> Result<Decimal, DomainError> {
    if amount.is_sign_negative() && !amount.is_zero() {
        return Err(DomainError::validation(field, "must not be negative"));
    }
    if amount > MAX_AMOUNT {
        return Err(DomainError::validation(
            field,
            format!("must not exceed {MAX_AMOUNT}"),
        ));
    }
    check_places(field, amount, currency)?;
    Ok(round_to_minor(amount, currency))
}

/// Checks a stated unit price: not negative, not above [`MAX_AMOUNT`], at
/// most [`MAX_UNIT_PRICE_PLACES`] decimal places (finer than the minor unit
/// is fine: 0.002 EUR per API call). Returns it as [`scale_unit_price`] writes
/// it. `field` names the input in the error.
pub fn validate_unit_price(
    field: &str,
    price: Decimal,
    currency: Currency,
) -> Result<Decimal, DomainError> {
    if price.is_sign_negative() && !price.is_zero() {
        return Err(DomainError::validation(field, "must not be negative"));
    }
    if price > MAX_AMOUNT {
        return Err(DomainError::validation(
            field,
            format!("must not exceed {MAX_AMOUNT}"),
        ));
    }
    if significant_places(price) > MAX_UNIT_PRICE_PLACES {
        return Err(DomainError::validation(
            field,
            format!("at most {MAX_UNIT_PRICE_PLACES} decimal places"),
        ));
    }
    Ok(scale_unit_price(price, currency))
}

/// A unit price with the places it uses, and at least the currency's minor
/// unit: "2.5" EUR → "2.50", "0.00200" EUR → "0.002", "3" JPY → "3".
pub fn scale_unit_price(price: Decimal, currency: Currency) -> Decimal {
    let mut scaled = price.normalize();
    if scaled.scale() < currency.minor_units() {
        scaled.rescale(currency.minor_units());
    }
    scaled
}

/// Parses a unit price given as a decimal string ("0.002"): the syntax of
/// [`Money::parse_price`], the rules of [`validate_unit_price`].
pub fn parse_unit_price(field: &str, s: &str, currency: Currency) -> Result<Decimal, DomainError> {
    validate_unit_price(field, parse_decimal_text(field, s)?, currency)
}

/// A plain decimal string ("12.50"): no padding, no exponent, no separators.
fn parse_decimal_text(field: &str, s: &str) -> Result<Decimal, DomainError> {
    let trimmed = s.trim();
    if trimmed.is_empty() || trimmed != s {
        return Err(DomainError::validation(field, "must be a decimal string"));
    }
    Decimal::from_str_exact(s)
        .map_err(|_| DomainError::validation(field, "must be a decimal string"))
}

fn check_places(field: &str, amount: Decimal, currency: Currency) -> Result<(), DomainError> {
    if significant_places(amount) > currency.minor_units() {
        return Err(DomainError::validation(
            field,
            format!(
                "{} allows at most {} decimal places",
                currency,
                currency.minor_units()
            ),
        ));
    }
    Ok(())
}

/// An amount in a currency, held at exactly the currency's minor-unit scale.
/// Negative amounts are allowed (credits); use [`Money::parse_price`] for inputs
/// that must not be negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    amount: Decimal,
    currency: Currency,
}

impl Money {
    /// An exact amount. Rejects an amount with more decimal places than the
    /// currency's minor unit (use [`Money::rounded`] for computed amounts).
    pub fn new(amount: Decimal, currency: Currency) -> Result<Money, DomainError> {
        check_places("amount", amount, currency)?;
        Ok(Money::rounded(amount, currency))
    }

    /// A computed amount, rounded half away from zero to the minor unit.
    pub fn rounded(amount: Decimal, currency: Currency) -> Money {
        Money {
            amount: round_to_minor(amount, currency),
            currency,
        }
    }

    /// Zero in a currency.
    pub fn zero(currency: Currency) -> Money {
        Money::rounded(Decimal::ZERO, currency)
    }

    /// Parses a price given as a decimal string ("12.50"): not negative, at most
    /// the currency's minor-unit places, at most [`MAX_AMOUNT`]. Errors name `field`.
    pub fn parse_price(field: &str, s: &str, currency: Currency) -> Result<Money, DomainError> {
        let amount = validate_price(field, parse_decimal_text(field, s)?, currency)?;
        Ok(Money { amount, currency })
    }

    /// The amount, at the currency's minor-unit scale.
    pub fn amount(&self) -> Decimal {
        self.amount
    }

    /// The currency.
    pub fn currency(&self) -> Currency {
        self.currency
    }

    /// The sum of two amounts in the same currency; `None` on a currency
    /// mismatch or overflow.
    pub fn checked_add(&self, other: Money) -> Option<Money> {
        if self.currency != other.currency {
            return None;
        }
        let amount = self.amount.checked_add(other.amount)?;
        Some(Money::rounded(amount, self.currency))
    }

    /// The same amount with the opposite sign.
    pub fn negated(&self) -> Money {
        Money::rounded(-self.amount, self.currency)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.amount, self.currency)
    }
}

/// The wire form: `{"amount": "12.50", "currency": "EUR"}`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MoneyRepr {
    #[serde(with = "rust_decimal::serde::str")]
    amount: Decimal,
    currency: Currency,
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        MoneyRepr {
            amount: self.amount,
            currency: self.currency,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let repr = MoneyRepr::deserialize(deserializer)?;
        Money::new(repr.amount, repr.currency).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str_exact(s).unwrap()
    }

    fn eur() -> Currency {
        Currency::parse("EUR").unwrap()
    }

    #[test]
    fn max_amount_is_one_quadrillion() {
        assert_eq!(MAX_AMOUNT, dec("1000000000000000"));
    }

    #[test]
    fn parses_known_codes_with_their_exponent() {
        for (code, places) in [
            ("USD", 2),
            ("EUR", 2),
            ("JPY", 0),
            ("KRW", 0),
            ("ISK", 0),
            ("CLP", 0),
            ("KWD", 3),
            ("BHD", 3),
            ("JOD", 3),
            ("TND", 3),
            ("CHF", 2),
        ] {
            let currency = Currency::parse(code).unwrap();
            assert_eq!(currency.code(), code);
            assert_eq!(currency.minor_units(), places, "{code}");
            assert_eq!(currency.to_string(), code);
        }
        assert_eq!(Currency::all().count(), CURRENCIES.len());
    }

    #[test]
    fn rejects_lowercase_unknown_and_padded_codes() {
        for bad in ["eur", "Eur", "XXX", "", "EURO", " EUR", "EUR "] {
            let err = Currency::parse(bad).unwrap_err();
            assert!(
                matches!(err, DomainError::Validation { ref field, .. } if field == "currency"),
                "{bad:?}: {err:?}"
            );
        }
    }

    #[test]
    fn currency_serializes_as_its_code_and_validates_on_read() {
        assert_eq!(serde_json::to_string(&eur()).unwrap(), "\"EUR\"");
        assert_eq!(
            serde_json::from_str::<Currency>("\"JPY\"").unwrap(),
            Currency::parse("JPY").unwrap()
        );
        assert!(serde_json::from_str::<Currency>("\"eur\"").is_err());
        assert!(serde_json::from_str::<Currency>("\"XXX\"").is_err());
    }

    #[test]
    fn rounds_half_away_from_zero_to_the_minor_unit() {
        let jpy = Currency::parse("JPY").unwrap();
        let kwd = Currency::parse("KWD").unwrap();
        for (amount, currency, expected) in [
            ("12.5", eur(), "12.50"),
            ("12", eur(), "12.00"),
            ("0.005", eur(), "0.01"),
            ("-0.005", eur(), "-0.01"),
            ("0.004999", eur(), "0.00"),
            ("-0.004", eur(), "0.00"),
            ("2.675", eur(), "2.68"),
            ("-2.675", eur(), "-2.68"),
            ("6.666666666667", eur(), "6.67"),
            ("0.5", jpy, "1"),
            ("-0.5", jpy, "-1"),
            ("1.49", jpy, "1"),
            ("1.0005", kwd, "1.001"),
            ("1", kwd, "1.000"),
        ] {
            let rounded = round_to_minor(dec(amount), currency);
            assert_eq!(rounded.to_string(), expected, "{amount} {currency}");
        }
    }

    #[test]
    fn new_rejects_more_places_than_the_minor_unit() {
        assert!(Money::new(dec("1.005"), eur()).is_err());
        assert!(Money::new(dec("1"), Currency::parse("JPY").unwrap()).is_ok());
        assert!(Money::new(dec("1.5"), Currency::parse("JPY").unwrap()).is_err());
        // Trailing zeros are not precision.
        let money = Money::new(dec("1.500"), eur()).unwrap();
        assert_eq!(money.amount().to_string(), "1.50");
        assert_eq!(money.currency(), eur());
        // Credits may be negative.
        assert_eq!(
            Money::new(dec("-3.2"), eur()).unwrap().amount().to_string(),
            "-3.20"
        );
        assert_eq!(
            Money::rounded(dec("1.005"), eur()).amount().to_string(),
            "1.01"
        );
    }

    #[test]
    fn parse_price_checks_sign_precision_and_syntax() {
        assert_eq!(
            Money::parse_price("base_price", "12.5", eur())
                .unwrap()
                .amount()
                .to_string(),
            "12.50"
        );
        assert_eq!(
            Money::parse_price("base_price", "0", eur()).unwrap(),
            Money::zero(eur())
        );
        for bad in [
            "-1",
            "1.001",
            "abc",
            "",
            " 1",
            "1e3",
            "12,50",
            "NaN",
            "1000000000000000.01",
        ] {
            let err = Money::parse_price("base_price", bad, eur()).unwrap_err();
            assert!(
                matches!(err, DomainError::Validation { ref field, .. } if field == "base_price"),
                "{bad:?}: {err:?}"
            );
        }
    }

    #[test]
    fn unit_prices_take_twelve_places_in_any_currency() {
        let jpy = Currency::parse("JPY").unwrap();
        for (text, currency, expected) in [
            ("0.002", eur(), "0.002"),
            ("2.5", eur(), "2.50"),
            ("0.00200", eur(), "0.002"),
            ("0.000000000001", eur(), "0.000000000001"),
            ("0.123456789012", jpy, "0.123456789012"),
            ("3", jpy, "3"),
            ("0", eur(), "0.00"),
            ("1000000000000000", eur(), "1000000000000000.00"),
        ] {
            let price = parse_unit_price("unit_price", text, currency).unwrap();
            assert_eq!(price.to_string(), expected, "{text} {currency}");
        }
        for (bad, message) in [
            ("0.0000000000001", "at most 12 decimal places"),
            ("1.1234567890123", "at most 12 decimal places"),
            ("-0.002", "must not be negative"),
            ("1000000000000000.01", "must not exceed 1000000000000000"),
            ("abc", "must be a decimal string"),
            (" 1", "must be a decimal string"),
            ("1e-3", "must be a decimal string"),
        ] {
            assert_eq!(
                parse_unit_price("meters[0].overage_unit_price", bad, eur()).unwrap_err(),
                DomainError::validation("meters[0].overage_unit_price", message),
                "{bad:?}"
            );
        }
        // Trailing zeros beyond twelve places are not precision.
        assert_eq!(
            validate_unit_price("p", dec("0.0020000000000000"), eur()).unwrap(),
            dec("0.002")
        );
    }

    #[test]
    fn money_wire_form_is_a_string_amount_and_a_code() {
        let money = Money::new(dec("12.5"), eur()).unwrap();
        let json = serde_json::to_value(money).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"amount": "12.50", "currency": "EUR"})
        );
        assert_eq!(serde_json::from_value::<Money>(json).unwrap(), money);
        assert!(serde_json::from_str::<Money>(r#"{"amount":"1.001","currency":"EUR"}"#).is_err());
        assert!(serde_json::from_str::<Money>(r#"{"amount":1.5,"currency":"EUR"}"#).is_err());
        assert!(serde_json::from_str::<Money>(r#"{"amount":"1","currency":"eur"}"#).is_err());
    }

    #[test]
    fn arithmetic_keeps_the_currency() {
        let a = Money::new(dec("1.10"), eur()).unwrap();
        let b = Money::new(dec("2.25"), eur()).unwrap();
        assert_eq!(a.checked_add(b).unwrap().amount().to_string(), "3.35");
        assert_eq!(a.negated().amount().to_string(), "-1.10");
        assert_eq!(Money::zero(eur()).negated().amount().to_string(), "0.00");
        let usd = Money::zero(Currency::parse("USD").unwrap());
        assert!(a.checked_add(usd).is_none());
        assert_eq!(a.to_string(), "1.10 EUR");
    }
}
