//! Who a licence user is in a report: their id, email and names as imported, or — for a
//! team whose `personal_data` is `hashed` — a keyed hash in place of all of them.
//!
//! The hash is HMAC-SHA256 of the user id under a key derived from the collector's
//! admin token, shortened to 16 hex digits (`u-3f9c…`): the same user gets the same
//! pseudonym in every report, CSV file, mail and dashboard page, so an admin can still
//! follow one person's days without learning who they are, and nobody without the key
//! can test a guessed name against it. Changing the admin token changes every
//! pseudonym; that is the price of not keeping one more secret.
//!
//! What is replaced: the user id and the email by the pseudonym, first and last name by
//! nothing. The team stays (the admin chose to hash *within* it).

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use super::Teams;
use crate::settings::Settings;
use daymeter_shared::ledger::PersonalData;

/// How a user appears in a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
}

/// The people of the settings, as reports show them.
pub struct People<'s> {
    settings: &'s Settings,
    teams: &'s Teams,
    key: [u8; 32],
}

impl<'s> People<'s> {
    /// `secret` keys the pseudonyms (the admin token).
    pub fn new(settings: &'s Settings, teams: &'s Teams, secret: &str) -> People<'s> {
        let mut h = Sha256::new();
        h.update(b"daymeter report pseudonyms\0");
        h.update(secret.as_bytes());
        People {
            settings,
            teams,
            key: h.finalize().into(),
        }
    }

    /// Whether `user`'s team hides its people.
    pub fn hashed(&self, user: &str) -> bool {
        self.settings
            .teams
            .get(self.teams.of(user))
            .is_some_and(|t| t.personal_data == PersonalData::Hashed)
    }

    /// The user id as reports show it.
    pub fn user(&self, user: &str) -> String {
        if self.hashed(user) {
            self.pseudonym(user)
        } else {
            user.to_owned()
        }
    }

    pub fn identity(&self, user: &str) -> Identity {
        if self.hashed(user) {
            let p = self.pseudonym(user);
            return Identity {
                user: p.clone(),
                email: p,
                first_name: String::new(),
                last_name: String::new(),
            };
        }
        let person = self.settings.people.get(user);
        let field = |f: fn(&crate::settings::Person) -> &Option<String>| {
            person.and_then(|p| f(p).clone()).unwrap_or_default()
        };
        Identity {
            user: user.to_owned(),
            email: field(|p| &p.email),
            first_name: field(|p| &p.first_name),
            last_name: field(|p| &p.last_name),
        }
    }

    /// The user a report shows as `shown`: a hashed team's user by their pseudonym,
    /// anyone else by their id.
    pub fn resolve(&self, shown: &str) -> String {
        self.settings
            .teams
            .values()
            .filter(|t| t.personal_data == PersonalData::Hashed)
            .flat_map(|t| &t.users)
            .find(|u| self.hashed(u) && self.pseudonym(u) == shown)
            .cloned()
            .unwrap_or_else(|| shown.to_owned())
    }

    fn pseudonym(&self, user: &str) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            // HMAC takes a key of any length; kept total rather than panicking.
            return "u-hashed".to_owned();
        };
        mac.update(user.as_bytes());
        let tag = mac.finalize().into_bytes();
        let hex: String = tag[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("u-{hex}")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use daymeter_shared::ledger::Team;

    use super::*;
    use crate::settings::Person;

    fn settings() -> Settings {
        let mut s = Settings {
            teams: BTreeMap::from([
                (
                    "civil".to_owned(),
                    Team {
                        users: vec!["ana".to_owned()],
                        ..Team::default()
                    },
                ),
                (
                    "hr".to_owned(),
                    Team {
                        users: vec!["ben".to_owned()],
                        personal_data: PersonalData::Hashed,
                        ..Team::default()
                    },
                ),
            ]),
            ..Settings::default()
        };
        for user in ["ana", "ben"] {
            s.people.insert(
                user.to_owned(),
                Person {
                    email: Some(format!("{user}@firm.example")),
                    first_name: Some(user.to_uppercase()),
                    last_name: Some("Doe".to_owned()),
                },
            );
        }
        s
    }

    #[test]
    fn a_shown_team_names_its_people_as_imported() {
        let s = settings();
        let teams = Teams::new(&s.teams);
        let people = People::new(&s, &teams, "admin-token-0000000001");
        let ana = people.identity("ana");
        assert_eq!(ana.email, "ana@firm.example");
        assert_eq!(
            (ana.first_name.as_str(), ana.last_name.as_str()),
            ("ANA", "Doe")
        );
    }

    #[test]
    fn a_hashed_team_shows_one_stable_keyed_pseudonym_and_no_names() {
        let s = settings();
        let teams = Teams::new(&s.teams);
        let people = People::new(&s, &teams, "admin-token-0000000001");
        let ben = people.identity("ben");
        assert!(
            ben.user.starts_with("u-") && ben.user.len() == 18,
            "{ben:?}"
        );
        assert_eq!(ben.email, ben.user);
        assert_eq!((ben.first_name.as_str(), ben.last_name.as_str()), ("", ""));
        assert!(!ben.user.contains("ben"));
        assert_eq!(people.user("ben"), ben.user, "the same in every report");
        let other_key = People::new(&s, &teams, "another-admin-token-01");
        assert_ne!(other_key.user("ben"), ben.user, "keyed: not a plain hash");
    }
}
