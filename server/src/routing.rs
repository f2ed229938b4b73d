//! Routing: which models run on a complete study, and where results go.
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
use vigie_inference::manifest::AppliesTo;

use crate::config::{Config, RuleConfig};
use vigie_store::{NewJob, SeriesSummary, StableStudy};

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
    /// Build from the configuration; `applies` gives each known model
    /// package's `[applies_to]`.
    pub fn new(config: &Config, applies: BTreeMap<String, AppliesTo>) -> anyhow::Result<Self> {
        let mut rules = Vec::new();
        for rule in &config.routing.rules {
            let models = if rule.models.is_empty() {
                config.inference.default_model.iter().cloned().collect()
            } else {
                rule.models.clone()
            };
            for model in &models {
                if !applies.contains_key(model) {
                    anyhow::bail!(
                        "routing rule {:?}: no model package {model:?} in {}",
                        rule.name,
                        config.inference.models_dir.display()
                    );
                }
            }
            let description = rule
                .series_description
                .as_deref()
                .map(Regex::new)
                .transpose()?;
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
        let mut config = Config::default();
        config.routing.rules = rules;
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
        Router::new(&config, applies).unwrap()
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
    fn unknown_models_are_configuration_errors() {
        let mut config = Config::default();
        config.routing.rules[0].models = vec!["missing".into()];
        assert!(Router::new(&config, BTreeMap::new()).is_err());
    }
}
