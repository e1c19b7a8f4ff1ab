"""The owner's words in each language the owner pages speak (English and Italian).

:func:`choose` picks the language from ``?lang=`` or the browser's ``Accept-Language``;
:func:`text` fills one message. Both catalogs hold the same keys (a test checks it), so a
missing translation is a failing test, never an English sentence on an Italian page.
"""

from __future__ import annotations

from typing import Final

DEFAULT: Final = "en"

EN: Final[dict[str, str]] = {
    "html_lang": "en",
    "page_title": "Check your vehicle for recalls",
    "brand": "Vehicle recall check",
    "heading": "Is your vehicle affected by a recall?",
    "intro": "Enter your 17-character Vehicle Identification Number (VIN). You find it on your registration "
    "document and at the base of the windscreen, on the driver's side.",
    "vin_label": "Vehicle Identification Number (VIN)",
    "vin_help": "17 letters and digits; I, O and Q are never used.",
    "check": "Check",
    "invalid_vin": "That is not a valid VIN: {reason}.",
    "too_many": "Too many checks from your connection. Please wait a minute and try again.",
    "vin_heading": "VIN {vin}",
    "vehicle": "{make} {model}, model year {year}",
    "made_by": "Manufacturer: {manufacturer}",
    "no_record": "We have no record of this vehicle. That is not the same as 'no recall': this service only "
    "knows vehicles registered by {manufacturer}. Check the VIN, or ask your national recall authority.",
    "no_recall": "No open or past recall of {manufacturer} affects this vehicle.",
    "open_recalls": "Open recalls: {count}. Not fixed yet.",
    "all_fixed": "Every recall affecting this vehicle is fixed.",
    "coverage": "What this check covers: recalls of {manufacturer} registered with this service, and whether "
    "the free remedy has been done. It shows no personal data.",
    "checked_at": "Checked {when} UTC.",
    "recall_heading": "Recall {number}: {title}",
    "safety_recall": "Safety recall",
    "recall": "Recall",
    "problem": "The problem",
    "risk": "The risk",
    "remedy": "The remedy",
    "status": "Status",
    "what_happened": "What happened to your vehicle",
    "what_to_do": "What to do",
    "about_update": "About the update",
    "update_minutes": "The update takes about {minutes} minutes.",
    "unavailable": "Not available during the update: {functions}.",
    "contact": "Questions? Call or write to",
    "dealer_locator": "Find a dealer near you",
    "status_fixed": "Fixed",
    "status_dealer": "Fixed at a dealer",
    "status_not_needed": "No repair needed (inspected)",
    "status_open": "Not fixed yet",
    "status_not_available": "Remedy not available yet",
    "happened_remedied": "The update was installed on {date} and your vehicle passed its check.",
    "happened_dealer": "A dealer did the repair on {date}.",
    "happened_inspected": "A dealer inspected your vehicle on {date}: no repair was needed.",
    "happened_pending": "The free over-the-air update will be sent to your vehicle soon.",
    "happened_notified": "Your vehicle was told about the free over-the-air update on {date}.",
    "happened_waiting": "The update is ready and waits until your vehicle is parked with the ignition off "
    "(last try {date}).",
    "happened_asks": "The update waits for your answer: you are asked in the vehicle or through the link "
    "in your notice.",
    "happened_installing": "The update started on {date} and is being installed.",
    "happened_rolled_back": "The update was tried on {date}; your vehicle went back to its previous software. "
    "It works as before, but the recall is not fixed yet.",
    "happened_timed_out": "The update was started on {date} but did not finish. Your vehicle keeps the software "
    "it had.",
    "happened_declined": "You declined the update on {date}.",
    "happened_withdrawn": "The update was withdrawn on {date} before your vehicle installed it.",
    "happened_returned": "The update was withdrawn: your vehicle is being returned to its previous software.",
    "happened_unreachable": "The recall is closed for this vehicle (recorded on {date}).",
    "happened_not_launched": "The remedy is not available yet.",
    "todo_nothing": "Nothing to do.",
    "todo_wait": "Nothing to do: the update installs by itself. If it is not done within 30 days, contact us.",
    "todo_retry": "Nothing to do now: it will be tried again automatically on {date}.",
    "todo_dealer": "Book the free repair at a dealer, or contact us to try the update again.",
    "todo_answer": "Answer in your vehicle or through the link in your notice; until then nothing changes.",
    "todo_later": "You will be told when the remedy is available. Until then, follow the advice above.",
    "owner_brand": "Your vehicle's software update",
    "owner_for": "{kind} {number} for the vehicle {vin}",
    "owner_update": "Update",
    "owner_what_changes": "What changes: {text}",
    "owner_minutes": "The update takes about {minutes} minutes.",
    "owner_unavailable": "Not available meanwhile: {functions}.",
    "owner_questions": "Questions? {name}",
    "owner_the_update": "The update for your vehicle",
    "owner_exactly": "This is exactly what your vehicle has been told to install, as signed for it:",
    "owner_image": "ECU {ecu}: version {version}, SHA-256 {sha256}",
    "owner_not_assigned": "Not assigned yet.",
    "owner_status": "Your vehicle's status: {state}.",
    "owner_question": "Do you want your vehicle to install this update? It installs only the version shown above.",
    "owner_accept": "Install this update",
    "owner_decline": "No, thanks",
    "owner_accepted": "You accepted this update on {when} UTC. Your vehicle reads your answer with the "
    "update's signed data the next time it checks.",
    "owner_declined": "You declined this update on {when} UTC. Your vehicle reads your answer with the "
    "update's signed data the next time it checks.",
    "owner_your_vehicle": "Your vehicle",
    "owner_no_page": "No such page.",
}

IT: Final[dict[str, str]] = {
    "html_lang": "it",
    "page_title": "Verifica i richiami del tuo veicolo",
    "brand": "Verifica richiami",
    "heading": "Il tuo veicolo è interessato da un richiamo?",
    "intro": "Inserisci il numero di telaio (VIN) di 17 caratteri. Lo trovi sul libretto di circolazione e alla "
    "base del parabrezza, lato guida.",
    "vin_label": "Numero di telaio (VIN)",
    "vin_help": "17 lettere e cifre; I, O e Q non si usano mai.",
    "check": "Verifica",
    "invalid_vin": "Questo non è un VIN valido: {reason}.",
    "too_many": "Troppe verifiche dalla tua connessione. Attendi un minuto e riprova.",
    "vin_heading": "VIN {vin}",
    "vehicle": "{make} {model}, anno modello {year}",
    "made_by": "Costruttore: {manufacturer}",
    "no_record": "Non abbiamo dati su questo veicolo. Non significa 'nessun richiamo': questo servizio conosce "
    "solo i veicoli registrati da {manufacturer}. Controlla il VIN o chiedi all'autorità nazionale dei richiami.",
    "no_recall": "Nessun richiamo di {manufacturer}, aperto o passato, riguarda questo veicolo.",
    "open_recalls": "Richiami aperti: {count}. Non ancora risolti.",
    "all_fixed": "Tutti i richiami che riguardano questo veicolo sono risolti.",
    "coverage": "Cosa copre questa verifica: i richiami di {manufacturer} registrati in questo servizio e se "
    "l'intervento gratuito è stato fatto. Non mostra dati personali.",
    "checked_at": "Verificato il {when} UTC.",
    "recall_heading": "Richiamo {number}: {title}",
    "safety_recall": "Richiamo di sicurezza",
    "recall": "Richiamo",
    "problem": "Il problema",
    "risk": "Il rischio",
    "remedy": "L'intervento",
    "status": "Stato",
    "what_happened": "Cosa è successo al tuo veicolo",
    "what_to_do": "Cosa fare",
    "about_update": "L'aggiornamento",
    "update_minutes": "L'aggiornamento dura circa {minutes} minuti.",
    "unavailable": "Non disponibile durante l'aggiornamento: {functions}.",
    "contact": "Domande? Chiama o scrivi a",
    "dealer_locator": "Trova un concessionario vicino a te",
    "status_fixed": "Risolto",
    "status_dealer": "Risolto da un concessionario",
    "status_not_needed": "Nessuna riparazione necessaria (ispezionato)",
    "status_open": "Non ancora risolto",
    "status_not_available": "Intervento non ancora disponibile",
    "happened_remedied": "L'aggiornamento è stato installato il {date} e il veicolo ha superato il controllo.",
    "happened_dealer": "Un concessionario ha fatto la riparazione il {date}.",
    "happened_inspected": "Un concessionario ha ispezionato il veicolo il {date}: nessuna riparazione necessaria.",
    "happened_pending": "L'aggiornamento gratuito via rete sarà inviato presto al tuo veicolo.",
    "happened_notified": "Il tuo veicolo è stato avvisato dell'aggiornamento gratuito via rete il {date}.",
    "happened_waiting": "L'aggiornamento è pronto e attende che il veicolo sia parcheggiato a motore spento "
    "(ultimo tentativo il {date}).",
    "happened_asks": "L'aggiornamento attende la tua risposta: ti viene chiesta nel veicolo o tramite il link "
    "nell'avviso.",
    "happened_installing": "L'aggiornamento è iniziato il {date} ed è in corso di installazione.",
    "happened_rolled_back": "L'aggiornamento è stato provato il {date}; il veicolo è tornato al software "
    "precedente. Funziona come prima, ma il richiamo non è ancora risolto.",
    "happened_timed_out": "L'aggiornamento è iniziato il {date} ma non si è concluso. Il veicolo mantiene il "
    "software che aveva.",
    "happened_declined": "Hai rifiutato l'aggiornamento il {date}.",
    "happened_withdrawn": "L'aggiornamento è stato ritirato il {date} prima dell'installazione.",
    "happened_returned": "L'aggiornamento è stato ritirato: il veicolo torna al software precedente.",
    "happened_unreachable": "Il richiamo è chiuso per questo veicolo (registrato il {date}).",
    "happened_not_launched": "L'intervento non è ancora disponibile.",
    "todo_nothing": "Nulla da fare.",
    "todo_wait": "Nulla da fare: l'aggiornamento si installa da solo. Se non avviene entro 30 giorni, contattaci.",
    "todo_retry": "Nulla da fare ora: sarà ritentato automaticamente il {date}.",
    "todo_dealer": "Prenota la riparazione gratuita da un concessionario, o contattaci per ritentare l'aggiornamento.",
    "todo_answer": "Rispondi nel veicolo o tramite il link nell'avviso; fino ad allora nulla cambia.",
    "todo_later": "Sarai avvisato quando l'intervento sarà disponibile. Nel frattempo segui le indicazioni sopra.",
    "owner_brand": "L'aggiornamento software del tuo veicolo",
    "owner_for": "{kind} {number} per il veicolo {vin}",
    "owner_update": "Aggiornamento",
    "owner_what_changes": "Cosa cambia: {text}",
    "owner_minutes": "L'aggiornamento dura circa {minutes} minuti.",
    "owner_unavailable": "Non disponibili nel frattempo: {functions}.",
    "owner_questions": "Domande? {name}",
    "owner_the_update": "L'aggiornamento per il tuo veicolo",
    "owner_exactly": "Ecco esattamente cosa è stato indicato al tuo veicolo di installare, firmato per lui:",
    "owner_image": "Centralina {ecu}: versione {version}, SHA-256 {sha256}",
    "owner_not_assigned": "Non ancora assegnato.",
    "owner_status": "Stato del tuo veicolo: {state}.",
    "owner_question": "Vuoi che il tuo veicolo installi questo aggiornamento? "
    "Installa solo la versione indicata sopra.",
    "owner_accept": "Installa questo aggiornamento",
    "owner_decline": "No, grazie",
    "owner_accepted": "Hai accettato questo aggiornamento il {when} UTC. Il veicolo legge la tua risposta con i "
    "dati firmati dell'aggiornamento al prossimo controllo.",
    "owner_declined": "Hai rifiutato questo aggiornamento il {when} UTC. Il veicolo legge la tua risposta con i "
    "dati firmati dell'aggiornamento al prossimo controllo.",
    "owner_your_vehicle": "Il tuo veicolo",
    "owner_no_page": "Pagina inesistente.",
}

CATALOGS: Final[dict[str, dict[str, str]]] = {"en": EN, "it": IT}


def choose(accept_language: str | None, override: str | None = None) -> str:
    """The language to answer in: ``override`` if it is one we speak, else the best of ``Accept-Language``."""
    if override and override.strip().lower()[:2] in CATALOGS:
        return override.strip().lower()[:2]
    ranked: list[tuple[float, int, str]] = []
    for position, part in enumerate((accept_language or "").split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        language = tag.strip().lower()[:2]
        if language in CATALOGS and quality > 0:
            ranked.append((-quality, position, language))
    return min(ranked)[2] if ranked else DEFAULT


def text(lang: str, key: str, **values: object) -> str:
    """One message in ``lang`` (English when ``lang`` is not spoken), with ``values`` filled in."""
    return CATALOGS.get(lang, EN)[key].format(**values)
