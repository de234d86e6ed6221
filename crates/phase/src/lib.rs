//! The phase specialists' data tools (plans/phase_specialists.md): classify text into a chip-design
//! phase by keywords, split a knowledge base into per-phase training files, and route queries to
//! specialist models while counting how each does.
//!
//! `classify_phase` reproduces the plan's script exactly by default: a phase scores one point per
//! keyword that occurs as a substring of the lower-cased text; the highest score wins; ties go to the
//! phase listed first (synthesis, placement, routing, timing, power, verification, floorplan); no hit
//! gives `general`. Substring matching is why "sta" fires on "state" and "via" on "deviation":
//! `#{matching: "word"}` matches whole words instead, the smarter option.

/// The identity of this crate's code (the hash of its sources and `Cargo.lock`): every result the
/// phase caches is keyed on it, so a changed build never serves an old answer.
pub fn code_identity() -> String {
    rtlab_core::provenance::code_identity("phase", env!("RTLAB_CODE_IDENTITY"))
}

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

/// The plan's PHASE_KEYWORDS, in the plan's order (which breaks ties).
pub const DEFAULT_PHASES: &[(&str, &[&str])] = &[
    (
        "synthesis",
        &[
            "yosys",
            "synthesis",
            "rtl",
            "gate-level",
            "netlist",
            "abc",
            "technology mapping",
        ],
    ),
    (
        "placement",
        &[
            "placement",
            "dreamplace",
            "cell placement",
            "wirelength",
            "legalization",
        ],
    ),
    (
        "routing",
        &[
            "routing",
            "tritonroute",
            "interconnect",
            "via",
            "metal layer",
            "global routing",
        ],
    ),
    (
        "timing",
        &[
            "timing",
            "sta",
            "slack",
            "setup",
            "hold",
            "clock",
            "critical path",
        ],
    ),
    (
        "power",
        &[
            "power",
            "leakage",
            "dynamic power",
            "voltage",
            "clock gating",
        ],
    ),
    (
        "verification",
        &["verification", "drc", "lvs", "simulation", "formal"],
    ),
    (
        "floorplan",
        &["floorplan", "die size", "aspect ratio", "pin placement"],
    ),
];

/// A keyword table: phases in tie-breaking order.
#[derive(Clone, Debug)]
pub struct PhaseTable {
    pub(crate) phases: Vec<(String, Vec<String>)>,
    pub(crate) whole_words: bool,
}

impl PhaseTable {
    pub fn default_table() -> PhaseTable {
        PhaseTable {
            phases: DEFAULT_PHASES
                .iter()
                .map(|(p, ks)| (p.to_string(), ks.iter().map(|k| k.to_string()).collect()))
                .collect(),
            whole_words: false,
        }
    }

    fn hits(&self, text: &str, keyword: &str) -> bool {
        if !self.whole_words {
            return text.contains(keyword);
        }
        let is_word = |c: char| c.is_alphanumeric() || c == '_';
        text.match_indices(keyword).any(|(i, _)| {
            let before = text[..i].chars().next_back();
            let after = text[i + keyword.len()..].chars().next();
            !before.is_some_and(is_word) && !after.is_some_and(is_word)
        })
    }

    pub fn classify(&self, text: &str) -> String {
        let lower = text.to_lowercase();
        let mut best: Option<(&str, usize)> = None;
        for (phase, keywords) in &self.phases {
            let score = keywords.iter().filter(|k| self.hits(&lower, k)).count();
            // Strictly greater: the first phase keeps a tie, as Python's max() does.
            if score > 0 && best.is_none_or(|(_, s)| score > s) {
                best = Some((phase, score));
            }
        }
        best.map(|(p, _)| p.to_string())
            .unwrap_or_else(|| "general".to_string())
    }

    pub(crate) fn phase_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.phases.iter().map(|p| p.0.clone()).collect();
        names.push("general".to_string());
        names
    }
}

/// The plan's PhaseRouter: a query goes to its phase's specialist, else to the general model.
#[derive(Clone)]
pub struct Router {
    pub(crate) table: PhaseTable,
    pub(crate) specialists: BTreeMap<String, String>,
    pub(crate) fallback: String,
    pub(crate) stats: Rc<RefCell<BTreeMap<String, (i64, i64)>>>,
}

mod api;

pub use api::PhasePackage;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_go_to_the_phase_listed_first_as_in_the_plan() {
        // One synthesis keyword and one timing keyword: synthesis is listed first.
        assert_eq!(
            PhaseTable::default_table().classify("yosys and slack"),
            "synthesis"
        );
        // Two timing keywords beat one synthesis keyword.
        assert_eq!(
            PhaseTable::default_table().classify("yosys, slack and hold"),
            "timing"
        );
    }

    #[test]
    fn substring_matching_misfires_and_word_matching_does_not() {
        let plan = PhaseTable::default_table();
        assert_eq!(plan.classify("a deviation in the state"), "routing"); // "via" in "deviation" and "sta" tie; routing is first
        let mut words = PhaseTable::default_table();
        words.whole_words = true;
        assert_eq!(words.classify("a deviation in the state"), "general");
        assert_eq!(words.classify("static timing: setup slack"), "timing");
    }
}
