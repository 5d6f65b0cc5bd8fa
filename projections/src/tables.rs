//! Which copy of its tables a projector writes: the live tables queries read,
//! or the shadow copy a blue/green rebuild fills (`<table>__next`).
//!
//! Projectors write their SQL against the live names (every read model table
//! is named `rm_…`) and pass each statement through [`Tables::sql`]; in shadow
//! mode that renames every `rm_…` identifier, so one projector body serves
//! both the incremental build and the rebuild. (So no column may start with
//! `rm_`.)

use std::borrow::Cow;

/// The suffix of a shadow table.
pub const SHADOW_SUFFIX: &str = "__next";
/// The prefix every read model table has.
pub const TABLE_PREFIX: &str = "rm_";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tables {
    #[default]
    Live,
    Shadow,
}

impl Tables {
    /// The statement with each read model table named for this target.
    pub fn sql<'a>(&self, sql: &'a str) -> Cow<'a, str> {
        match self {
            Tables::Live => Cow::Borrowed(sql),
            Tables::Shadow => Cow::Owned(rename_tables(sql)),
        }
    }

    /// One table's name for this target.
    pub fn name(&self, table: &str) -> String {
        match self {
            Tables::Live => table.to_string(),
            Tables::Shadow => shadow_name(table),
        }
    }
}

pub fn shadow_name(table: &str) -> String {
    format!("{table}{SHADOW_SUFFIX}")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Appends the shadow suffix to every identifier that starts with `rm_`.
fn rename_tables(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 32);
    let mut rest = sql;
    while let Some(i) = rest.find(TABLE_PREFIX) {
        let starts_word = rest[..i].chars().next_back().is_none_or(|c| !is_ident(c));
        let (head, tail) = rest.split_at(i);
        out.push_str(head);
        let len = tail.find(|c: char| !is_ident(c)).unwrap_or(tail.len());
        out.push_str(&tail[..len]);
        if starts_word {
            out.push_str(SHADOW_SUFFIX);
        }
        rest = &tail[len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_renames_whole_read_model_identifiers_only() {
        let sql = "INSERT INTO rm_usage_totals (x) SELECT x FROM rm_usage WHERE form_x = 2";
        assert_eq!(
            Tables::Shadow.sql(sql),
            "INSERT INTO rm_usage_totals__next (x) SELECT x FROM rm_usage__next WHERE form_x = 2"
        );
        assert_eq!(Tables::Live.sql(sql), sql);
    }
}
