//! Keys to commands, in one place (the help overlay lists the same keys, see [`super::help`]).

use egui::{Key, Modifiers};

use super::{Command, Tab};

/// Reads this frame's key presses into commands. Keys meant for a text field never get here:
/// the caller skips this while a text field has the keyboard.
pub fn read(ctx: &egui::Context, tab: Tab, commands: &mut Vec<Command>) {
    let typing = ctx.egui_wants_keyboard_input();
    ctx.input_mut(|i| {
        if i.consume_key(Modifiers::NONE, Key::F1)
            || (!typing && i.consume_key(Modifiers::SHIFT, Key::Questionmark))
            || (!typing && i.consume_key(Modifiers::NONE, Key::Questionmark))
        {
            commands.push(Command::ToggleHelp);
        }
        // These work while typing in a field too.
        if i.consume_key(Modifiers::COMMAND, Key::S) {
            commands.push(Command::Save);
        }
        if i.consume_key(Modifiers::COMMAND, Key::G) {
            commands.push(Command::FocusGoTo);
        }
        if typing {
            return;
        }
        if i.consume_key(Modifiers::COMMAND | Modifiers::SHIFT, Key::Z)
            || i.consume_key(Modifiers::COMMAND, Key::Y)
        {
            commands.push(Command::Redo);
        }
        if i.consume_key(Modifiers::COMMAND, Key::Z) {
            commands.push(Command::Undo);
        }
        if tab != Tab::Review {
            return;
        }
        let plain: &[(Key, Command)] = &[
            (Key::PageDown, Command::Step(1)),
            (Key::J, Command::Step(1)),
            (Key::PageUp, Command::Step(-1)),
            (Key::K, Command::Step(-1)),
            (Key::N, Command::NextUnreviewed),
            (
                Key::A,
                Command::Review(crate::data::store::ReviewStatus::Accepted),
            ),
            (
                Key::R,
                Command::Review(crate::data::store::ReviewStatus::Rejected),
            ),
            (
                Key::F,
                Command::Review(crate::data::store::ReviewStatus::NeedsFix),
            ),
            (Key::Delete, Command::SetBox(None)),
            (Key::Backspace, Command::SetBox(None)),
            (Key::D, Command::ResetToDetected),
            (Key::Num0, Command::Fit),
            (Key::Home, Command::Fit),
            (Key::Num1, Command::OneToOne),
            (Key::M, Command::ToggleMarkerRemoved),
        ];
        for (key, command) in plain {
            if i.consume_key(Modifiers::NONE, *key) {
                commands.push(command.clone());
            }
        }
        // Arrows: move; with Ctrl resize; Shift makes a step 10 px.
        for (key, dx, dy) in [
            (Key::ArrowLeft, -1.0, 0.0),
            (Key::ArrowRight, 1.0, 0.0),
            (Key::ArrowUp, 0.0, -1.0),
            (Key::ArrowDown, 0.0, 1.0),
        ] {
            for (mods, resize, step) in [
                // Most specific first: a plain-key match would also take Shift+key.
                (Modifiers::COMMAND | Modifiers::SHIFT, true, 10.0),
                (Modifiers::COMMAND, true, 1.0),
                (Modifiers::SHIFT, false, 10.0),
                (Modifiers::NONE, false, 1.0),
            ] {
                if i.consume_key(mods, key) {
                    commands.push(Command::Nudge {
                        dx: dx * step,
                        dy: dy * step,
                        resize,
                    });
                }
            }
        }
    });
}
