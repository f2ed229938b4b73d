//! Routing: which models run on a complete study, and where results go.
//! `vigie serve` routes every complete study through a [`Router`]; the
//! evaluation of the hospital's own cases must choose the series the same
//! way, which is why routing lives here and not in the service.
//!
//! Every rule is evaluated on every series of the study (the series of the
//! generation that just completed). A series is taken by a rule when each
//! criterion the rule sets matches (lists: any value, case-insensitive;
//! series description: regular expression), and by a model of the rule when
//! the model package also declares it applies (`[applies_to]` of
//! model.toml). One job per (rule, model) with the series it took. A study
//! no rule takes is recorded with a note saying so, never dropped silently.

use std::collections::BTreeMap;

use regex::Regex;
use serde::{Deserialize, Serialize};
use vigie_inference::manifest::AppliesTo;
/// The study, series and job types routing reads and writes (re-exported
/// so that callers outside the service need not depend on the store).
pub use vigie_store::{NewJob, SeriesSummary, StableStudy};

/// A routing table that cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RoutingError {
    /// A rule names a model package that is not installed.
    #[error("routing rule {rule:?}: no model package {model:?}")]
    UnknownModel {
        /// The rule's name.
        rule: String,
        /// The model package id it names.
        model: String,
    },
    /// A rule's `series_description` is not a regular expression.
    #[error("routing rule {rule:?}: series_description is not a regular expression")]
    Description {
        /// The rule's name.
        rule: String,
        /// What the regular expression parser said.
        #[source]
        source: regex::Error,
    },
}

/// `[routing]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Rules, all evaluated on every complete study.
    pub rules: Vec<RuleConfig>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            rules: vec![RuleConfig {
                name: "default".into(),
                ..RuleConfig::default()
            }],
        }
    }
}

/// `[[routing.rules]]`: which series a rule takes (every set criterion must
/// match; lists match any of their values, case-insensitively), which
/// models run on them and where the results go.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuleConfig {
    /// Name, in logs and job records.
    pub name: String,
    /// Modality (0008,0060) values.
    pub modalities: Vec<String>,
    /// Body Part Examined (0018,0015) values.
    pub body_parts: Vec<String>,
    /// SOP Class UIDs.
    pub sop_classes: Vec<String>,
    /// Regular expression on Series Description (0008,103E).
    pub series_description: Option<String>,
    /// Calling AE titles of the sender.
    pub calling_ae_titles: Vec<String>,
    /// Model package ids; empty: `inference.default_model`. A model also
    /// only takes the series its package declares it applies to.
    pub models: Vec<String>,
    /// Names of `[destinations.*]` results are sent to; empty: kept locally.
    pub destinations: Vec<String>,
}

impl RuleConfig {
    /// The models this rule runs: its own, or `default_model` when it
    /// names none.
    pub fn models_or(&self, default_model: Option<&str>) -> Vec<String> {
        if self.models.is_empty() {
            default_model.map(str::to_string).into_iter().collect()
        } else {
            self.models.clone()
        }
    }
}

impl RoutingConfig {
    /// What is wrong with these rules, one line each, named as in the
    /// configuration file (`routing.rules[N] (name)…`): `destination` says
    /// whether a destination name is configured, `default_model` is the
    /// model of rules that name none. Empty when nothing is.
    pub fn problems(
        &self,
        destination: impl Fn(&str) -> bool,
        default_model: Option<&str>,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let label = format!("routing.rules[{i}] ({})", rule.name);
            if rule.name.trim().is_empty() {
                problems.push(format!("{label}: name must not be empty"));
            }
            if let Some(pattern) = &rule.series_description
                && let Err(e) = Regex::new(pattern)
            {
                problems.push(format!("{label}.series_description: {e}"));
            }
            for d in &rule.destinations {
                if !destination(d) {
                    problems.push(format!("{label}: unknown destination {d:?}"));
                }
            }
            if rule.models_or(default_model).is_empty() {
                problems.push(format!("{label}: no models and no inference.default_model"));
            }
        }
        problems
    }
}

/// A rule ready to match.
#[derive(Debug, Clone)]
pub struct Rule {
    config: RuleConfig,
    models: Vec<String>,
    description: Option<Regex>,
}

/// The routing table.
#[derive(Debug, Clone)]
pub struct Router {
    rules: Vec<Rule>,
    applies: BTreeMap<String, AppliesTo>,
}

fn any_of(list: &[String], value: Option<&str>) -> bool {
    list.is_empty()
        || value.is_some_and(|v| list.iter().any(|x| x.trim().eq_ignore_ascii_case(v.trim())))
}

impl Rule {
    fn takes(&self, series: &SeriesSummary) -> bool {
        let c = &self.config;
        any_of(&c.modalities, series.modality.as_deref())
            && any_of(&c.body_parts, series.body_part.as_deref())
            && (c.sop_classes.is_empty()
                || series
                    .sop_classes
                    .iter()
                    .any(|s| any_of(&c.sop_classes, Some(s))))
            && (c.calling_ae_titles.is_empty()
                || series
                    .calling_ae_titles
                    .iter()
                    .any(|s| any_of(&c.calling_ae_titles, Some(s))))
            && self.description.as_ref().is_none_or(|re| {
                series
                    .series_description
                    .as_deref()
                    .is_some_and(|d| re.is_match(d))
            })
    }
}

impl Router {
    /// Build from the `[routing]` section; a rule that names no model runs
    /// `default_model`; `applies` gives each installed model package's
    /// `[applies_to]`.
    pub fn new(
        routing: &RoutingConfig,
        default_model: Option<&str>,
        applies: BTreeMap<String, AppliesTo>,
    ) -> Result<Self, RoutingError> {
        let mut rules = Vec::new();
        for rule in &routing.rules {
            let models = rule.models_or(default_model);
            if let Some(model) = models.iter().find(|m| !applies.contains_key(*m)) {
                return Err(RoutingError::UnknownModel {
                    rule: rule.name.clone(),
                    model: model.clone(),
                });
            }
            let description = rule
                .series_description
                .as_deref()
                .map(Regex::new)
                .transpose()
                .map_err(|source| RoutingError::Description {
                    rule: rule.name.clone(),
                    source,
                })?;
            rules.push(Rule {
                config: rule.clone(),
                models,
                description,
            });
        }
        Ok(Self { rules, applies })
    }

    /// The jobs for a complete study, and a note when nothing applies.
    pub fn route(&self, study: &StableStudy) -> (Vec<NewJob>, Option<String>) {
        let mut jobs = Vec::new();
        for rule in &self.rules {
            for model in &rule.models {
                let Some(applies) = self.applies.get(model) else {
                    continue;
                };
                let series: Vec<String> = study
                    .series
                    .iter()
                    .filter(|s| rule.takes(s))
                    .filter(|s| {
                        s.sop_classes.iter().any(|class| {
                            applies.matches(s.modality.as_deref(), s.body_part.as_deref(), class)
                        })
                    })
                    .map(|s| s.series_instance_uid.clone())
                    .collect();
                if !series.is_empty() {
                    jobs.push(NewJob {
                        rule: rule.config.name.clone(),
                        model: model.clone(),
                        series,
                        destinations: rule.config.destinations.clone(),
                    });
                }
            }
        }
        let note = jobs.is_empty().then(|| {
            let seen: Vec<String> = study
                .series
                .iter()
                .map(|s| {
                    format!(
                        "{}/{}",
                        s.modality.as_deref().unwrap_or("?"),
                        s.body_part.as_deref().unwrap_or("?")
                    )
                })
                .collect();
            format!(
                "no routing rule and model applies (series modality/body part: {})",
                seen.join(", ")
            )
        });
        (jobs, note)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(uid: &str, modality: &str, body: Option<&str>, desc: &str) -> SeriesSummary {
        SeriesSummary {
            series_instance_uid: uid.into(),
            modality: Some(modality.into()),
            body_part: body.map(str::to_string),
            series_description: Some(desc.into()),
            sop_classes: vec!["1.2.840.10008.5.1.4.1.1.4".into()],
            calling_ae_titles: vec!["PACS".into()],
            instances: 1,
        }
    }

    fn router(rules: Vec<RuleConfig>) -> Router {
        let routing = RoutingConfig { rules };
        let applies = BTreeMap::from([
            (
                "brain".to_string(),
                AppliesTo {
                    modalities: vec!["MR".into()],
                    body_parts: vec!["BRAIN".into(), "HEAD".into()],
                    sop_classes: vec![],
                },
            ),
            ("any".to_string(), AppliesTo::default()),
        ]);
        Router::new(&routing, Some("brain"), applies).unwrap()
    }

    #[test]
    fn rules_and_model_scope_both_select_series() {
        let router = router(vec![RuleConfig {
            name: "neuro".into(),
            series_description: Some("(?i)t1".into()),
            calling_ae_titles: vec!["pacs".into()],
            models: vec!["brain".into(), "any".into()],
            destinations: vec![],
            ..RuleConfig::default()
        }]);
        let study = StableStudy {
            study_instance_uid: "1.2".into(),
            generation: 0,
            series: vec![
                series("1.2.1", "MR", Some("BRAIN"), "T1 axial"),
                series("1.2.2", "MR", Some("KNEE"), "t1 sag"),
                series("1.2.3", "MR", Some("HEAD"), "FLAIR"),
                series("1.2.4", "CT", Some("HEAD"), "T1?"),
            ],
        };
        let (jobs, note) = router.route(&study);
        assert!(note.is_none());
        let by_model: BTreeMap<&str, &Vec<String>> =
            jobs.iter().map(|j| (j.model.as_str(), &j.series)).collect();
        assert_eq!(by_model["brain"], &vec!["1.2.1".to_string()]);
        assert_eq!(
            by_model["any"],
            &vec!["1.2.1".to_string(), "1.2.2".into(), "1.2.4".into()]
        );
    }

    #[test]
    fn a_study_nothing_applies_to_gets_a_note() {
        let router = router(vec![RuleConfig {
            name: "mr".into(),
            modalities: vec!["MR".into()],
            models: vec!["brain".into()],
            ..RuleConfig::default()
        }]);
        let study = StableStudy {
            study_instance_uid: "1.3".into(),
            generation: 0,
            series: vec![series("1.3.1", "CT", None, "chest")],
        };
        let (jobs, note) = router.route(&study);
        assert!(jobs.is_empty());
        assert!(note.unwrap().contains("CT/?"));
    }

    #[test]
    fn rule_problems_are_named_as_in_the_configuration_file() {
        let routing = RoutingConfig {
            rules: vec![RuleConfig {
                name: String::new(),
                series_description: Some("(".into()),
                destinations: vec!["pacs".into(), "nowhere".into()],
                ..RuleConfig::default()
            }],
        };
        let problems = routing.problems(|d| d == "pacs", None);
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].starts_with("routing.rules[0] (): name must not be empty"));
        assert!(problems[1].starts_with("routing.rules[0] ().series_description:"));
        assert!(problems[2].contains("unknown destination \"nowhere\""));
        assert!(problems[3].contains("no models and no inference.default_model"));
        assert!(
            RoutingConfig::default()
                .problems(|_| false, Some("m"))
                .is_empty()
        );
    }

    #[test]
    fn unknown_models_and_bad_expressions_are_configuration_errors() {
        let mut routing = RoutingConfig::default();
        routing.rules[0].models = vec!["missing".into()];
        let err = Router::new(&routing, None, BTreeMap::new()).unwrap_err();
        assert!(
            matches!(err, RoutingError::UnknownModel { ref model, .. } if model == "missing"),
            "{err}"
        );
        // The default rule names no model: it runs the default one.
        let applies = BTreeMap::from([("brain".to_string(), AppliesTo::default())]);
        let err =
            Router::new(&RoutingConfig::default(), Some("other"), applies.clone()).unwrap_err();
        assert!(err.to_string().contains("\"other\""), "{err}");
        routing.rules[0].models = vec!["brain".into()];
        routing.rules[0].series_description = Some("(unclosed".into());
        let err = Router::new(&routing, None, applies).unwrap_err();
        assert!(matches!(err, RoutingError::Description { .. }), "{err}");
        assert!(std::error::Error::source(&err).is_some());
    }
}
